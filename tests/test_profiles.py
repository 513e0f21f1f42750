"""Each alert-rule profile runs at the scrape interval its shipped Prometheus config uses.

The fast profile's rules take rates over 10 s; under compose's 15 s scrapes such a window
holds one sample, every recording rule is empty and the rollback alert never fires. So
each profile ships its own Prometheus config (prometheus.yml: production, rules/;
prometheus-fast.yml: fast, rules-fast/), and here promtool runs each profile's rules on
series sampled at the scrape interval that config gives the job they come from,
evaluated at the interval Prometheus would use: a canary that fails hard must fire the
rollback alert, a healthy one must not. The same check at the old pairing (fast rules,
15 s scrapes) fails, which shows the check can tell.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import yaml

from alerts.alerting import CANARY_ERROR_RATE_HIGH
from alerts.render import RULE_FILES
from exporter.server import add_arguments
from tests.rule_profiles import (CONFIGS, PROXY_JOB, REPO, Profile, counter, duration, load_profile, promtool_test,
                                 seconds, selector)

REQUESTS = "ollama_proxy_route_requests_total"


def canary_fails_hard(profile: Profile) -> tuple[list[dict], float]:
    """promtool tests: both arms serve 2 req/s; at ``fault`` every canary request starts
    failing (HTTP 500 from upstream). Returns the tests and the time of the fault.

    The rollback alert must be silent up to the fault and firing by the time the profile's
    own design says: one rate window, the alert's `for:`, and two evaluations later.
    """
    step = profile.scrape_interval(PROXY_JOB)
    evaluation = profile.eval_interval()
    alert = profile.alert(CANARY_ERROR_RATE_HIGH)
    window = max(w for _, job, w in profile.range_windows() if job == PROXY_JOB)
    fault_sample = math.ceil(2 * window / step)  # two full windows of healthy traffic first
    fault = fault_sample * step
    deadline = fault + window + seconds(alert.get("for", "0s")) + 2 * evaluation
    deadline = math.ceil(deadline / evaluation) * evaluation
    samples = math.ceil((deadline + window) / step) + 1
    target = profile.target_labels(PROXY_JOB)

    def arm(name: str, error_type: str) -> dict:
        return {**target, "route": "chat", "arm": name, "error_type": error_type}

    series = [
        {"series": selector(REQUESTS, arm("stable", "none")), "values": counter(2, step, samples)},
        {"series": selector(REQUESTS, arm("canary", "none")), "values": counter(2, step, samples, stop=fault_sample)},
        {"series": selector(REQUESTS, arm("canary", "upstream_5xx")),
         "values": counter(2, step, samples, start=fault_sample)},
    ]
    firing = f'count by (alertname, route) (ALERTS{{alertname="{CANARY_ERROR_RATE_HIGH}", alertstate="firing"}})'
    return [{
        "name": f"{profile.name}: canary fails every request from {duration(fault)} on, "
                f"scraped every {duration(step)}, evaluated every {duration(evaluation)}",
        "interval": duration(step),
        "input_series": series,
        "promql_expr_test": [
            {"expr": firing, "eval_time": duration(fault), "exp_samples": []},
            {"expr": firing, "eval_time": duration(deadline),
             "exp_samples": [{"labels": f'{{alertname="{CANARY_ERROR_RATE_HIGH}", route="chat"}}', "value": 1}]},
        ],
    }], fault


@pytest.fixture(params=sorted(CONFIGS), ids=lambda name: name)
def profile(request: pytest.FixtureRequest) -> Profile:
    return load_profile(request.param)


def test_each_profile_config_loads_exactly_its_generated_rules(profile: Profile) -> None:
    assert profile.rule_files == [REPO / RULE_FILES[profile.name]]


def test_a_canary_failing_hard_fires_the_rollback_alert_at_the_shipped_scrape_interval(
        profile: Profile, tmp_path: Path) -> None:
    tests, _ = canary_fails_hard(profile)
    result = promtool_test(profile, tests, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_for_fast_rules_at_the_production_scrape_interval(tmp_path: Path) -> None:
    """The old compose pairing: fast rules (10 s windows) on 15 s scrapes never fire."""
    production = load_profile("production")
    old = load_profile("fast").with_scrape_interval(PROXY_JOB, production.config["global"]["scrape_interval"])
    assert old.scrape_interval(PROXY_JOB) == 15
    tests, _ = canary_fails_hard(old)
    result = promtool_test(old, tests, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # It fails where the alert should fire, and only there: nothing fires at all (a 10 s
    # window never holds the two samples a rate needs).
    assert output.count("FAILED") == 1, output
    assert f'exp: {{alertname="{CANARY_ERROR_RATE_HIGH}", route="chat"}} 1E+00\n        got: nil' in output, output


def test_every_rate_window_spans_four_scrapes_of_the_job_it_reads(profile: Profile) -> None:
    """Prometheus's rule of thumb: a window of at least 4 scrape intervals still holds two
    samples after a missed scrape. Checked for every range selector of every rule."""
    windows = profile.range_windows()
    assert windows
    for expr, job, window in windows:
        interval = profile.scrape_interval(job)
        assert window >= 4 * interval, f"{profile.name}: [{window:g}s] over {job} scraped every {interval:g}s: {expr}"


def test_fast_config_differs_from_production_only_in_intervals_and_rules() -> None:
    """Two files to keep in step: same jobs, targets, host labels and Alertmanager."""
    production = yaml.safe_load(CONFIGS["production"].read_text())
    fast = yaml.safe_load(CONFIGS["fast"].read_text())
    for config in (production, fast):
        config.pop("global")
        config.pop("rule_files")
        for job in config["scrape_configs"]:
            job.pop("scrape_interval", None)
            job.pop("scrape_timeout", None)
    assert fast == production


def test_fast_exporter_scrape_outlasts_the_exporters_ollama_timeout() -> None:
    """A hung Ollama must read as ollama_up 0 (OllamaDown), not as a failed scrape of the
    exporter (OllamaExporterDown): the scrape waits longer than the exporter waits."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, "exporter")
    compose = yaml.safe_load((REPO / "compose" / "docker-compose.yml").read_text())
    # The exporter's arguments as compose runs it (the image's entrypoint is `ollama-sidecar`).
    exporter_timeout = parser.parse_args(compose["services"]["exporter"]["command"][1:]).timeout
    for name in CONFIGS:
        profile = load_profile(name)
        job = profile.job("ollama-exporter")
        interval = profile.scrape_interval("ollama-exporter")
        timeout = seconds(job.get("scrape_timeout") or profile.config["global"].get("scrape_timeout", "10s"))
        assert exporter_timeout < min(timeout, interval), name
