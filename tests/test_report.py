"""``ollama-sidecar report``: the verdict rules on counts (the statistics themselves are
tested in test_decisions.py), per-session clustering, option parsing, and the whole
command against a real Prometheus loaded with synthetic proxy metrics.

The Prometheus is Debian's binary over a TSDB backfilled with ``promtool tsdb
create-blocks-from openmetrics``; the synthetic traffic is laid out so that the counts
the report must show can be worked out on paper (see ``SCENARIOS``).
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import time
from dataclasses import dataclass

import pytest
import requests

from proxy import metrics as pm
from proxy.cli import main
from proxy.commands import report
from proxy.control import decisions
from tests.binaries import require_binary

# --- the verdict rules, on counts --------------------------------------------------------

RULES = report.Rules()


def _arm(requests_: int, failures: int, ttft: int | None = None, slow: int = 0) -> dict:
    """What :func:`report.decide` reads of an arm; TTFT observed on every request unless told."""
    return {"requests": requests_, "failures": failures,
            "ttft_observations": requests_ if ttft is None else ttft, "ttft_over_slo": slow}


NO_SESSIONS = {arm: report.concentration(report.SessionCounts({}, {})) for arm in report.ARMS}


def _quality(arm: dict, chats: int, regenerations: int, ratings: int = 0, negative: int = 0) -> dict:
    return {**arm, **report.quality_numbers({"chat_requests": chats, "turns": chats * 2, "regenerations": regenerations,
                                             "ratings": ratings, "negative_ratings": negative,
                                             "sessions_started": chats / 4})}


def test_a_canary_whose_users_regenerate_significantly_more_is_worse_without_any_failure():
    healthy = _arm(2000, 0)
    result = decide(_quality(healthy, 400, 8), _quality(healthy, 400, 60))
    assert result["verdict"] == report.WORSE and result["quality_worse"] == ["regeneration ratio"]
    assert "regeneration ratio: canary 60/400 against stable's 8/400" in result["reason"]


def test_negative_ratings_count_too_and_a_few_ratings_say_nothing():
    healthy = _arm(2000, 0)
    worse = decide(_quality(healthy, 400, 8, ratings=100, negative=10), _quality(healthy, 400, 8, 100, 45))
    assert worse["quality_worse"] == ["negative ratings"]
    few = decide(_quality(healthy, 400, 8, ratings=3, negative=0), _quality(healthy, 400, 8, 3, 2))
    assert few["quality_worse"] == [] and few["verdict"] != report.WORSE


def test_quality_numbers_carry_intervals():
    q = report.quality_numbers({"chat_requests": 200, "turns": 500, "regenerations": 20, "ratings": 50,
                                "negative_ratings": 10, "sessions_started": 40})
    assert (q["mean_turns"], q["regeneration_ratio"], q["satisfaction"]) == (2.5, 0.1, 0.8)
    low, high = q["regeneration_ratio_ci95"]
    assert low < 0.1 < high


def decide(stable: dict, canary: dict, rules: report.Rules = RULES, sessions: dict = NO_SESSIONS) -> dict:
    return report.decide({"stable": stable, "canary": canary}, sessions, rules)


def test_canary_failing_10_percent_against_1_percent_is_worse():
    result = decide(_arm(1200, 12), _arm(400, 40))
    assert result["verdict"] == report.WORSE
    assert result["reason"] == ("worse: failure ratio 10.00% against stable's 1.00% "
                                "(one-sided pooled z p < 0.0001, α 0.025)")
    assert result["failures"]["test"]["method"] == decisions.Z_POOLED
    assert result["more_canary_requests"] is None
    assert result["latency"]["outcome"] == report.NON_INFERIOR


def test_equal_arms_with_plenty_of_traffic_are_non_inferior():
    result = decide(_arm(800, 8), _arm(800, 8))
    assert result["verdict"] == report.NON_INFERIOR
    # Newcombe at one-sided 0.025: 0 ± the arms' Wilson half-widths, 1.08 points < 2.
    assert result["failures"]["upper"] == pytest.approx(0.0108, abs=5e-5)
    assert result["reason"].startswith(
        "non-inferior: failure ratio within the margin (upper 97.5% limit of canary − stable +1.08 pp "
        "< margin 2.00 pp); share of TTFT over 2.5 s within the margin")


def test_30_requests_per_arm_are_inconclusive_with_the_requests_still_needed():
    result = decide(_arm(30, 0), _arm(30, 0))
    # 0 failures in both arms: the Wilson-based projection needs n > (z_α + z_β)²·(1 − δ)/δ,
    # 385 canary requests for a 2-point margin, 355 more than the 30 seen (test_decisions).
    assert result["verdict"] == report.INCONCLUSIVE
    assert result["more_canary_requests"] == 355
    assert result["reason"].startswith("inconclusive: need about 355 more canary requests (failure ratio: "
                                       "upper 97.5% limit of canary − stable +11.35 pp ≥ margin 2.00 pp")
    # The latency test, at its wider margin (5 points), needs fewer; the larger need is the answer.
    latency = decisions.assess_latency_slo(0, 30, 0, 30, margin=report.LATENCY_MARGIN).more_canary_requests
    assert result["latency"]["more_canary_requests"] == latency < 355


def test_the_report_takes_the_larger_need_of_failures_and_latency():
    result = decide(_arm(400, 4, slow=80), _arm(400, 4, slow=80))
    assert result["failures"]["outcome"] == report.NON_INFERIOR
    expected = decisions.assess_latency_slo(80, 400, 80, 400, margin=report.LATENCY_MARGIN).more_canary_requests
    assert result["latency"]["more_canary_requests"] == expected
    assert result["more_canary_requests"] == expected
    assert f"need about {expected} more canary requests (share of TTFT over 2.5 s: " in result["reason"]


def test_latency_needs_are_counted_in_requests_not_ttft_observations():
    # Half of the canary's requests produce a time to first token: twice the observations
    # needed means about twice as many requests.
    result = decide(_arm(60, 0, ttft=60), _arm(60, 0, ttft=30))
    more = decisions.assess_latency_slo(0, 30, 0, 60, margin=report.LATENCY_MARGIN).more_canary_requests
    assert result["latency"]["more_canary_requests"] == 2 * more


def test_the_exact_test_decides_at_small_counts():
    # 2 of 30 canary requests against 2 of 270: 0.4 expected canary failures. The pooled
    # z-test would call it worse (z 2.68, one-sided p 0.0036); Fisher's mid-p does not
    # (0.0273 > 0.025), and the excess (5.9 points) is past the margin: no N is promised.
    z = decisions.z_test_worse(2, 30, 2, 270)
    assert z.p_value < 0.025
    result = decide(_arm(270, 2), _arm(30, 2))
    assert result["failures"]["test"]["method"] == decisions.FISHER_MID_P
    assert result["failures"]["test"]["p_value"] == pytest.approx(0.0273, abs=5e-5)
    assert result["verdict"] == report.INCONCLUSIVE and result["more_canary_requests"] is None
    assert result["reason"].startswith("inconclusive: failure ratio: canary 2/30 failed, stable 2/270")
    assert "more requests are not expected to show non-inferiority" in result["reason"]
    # 4 failures in 12 canary requests against 1 % of stable's: worse, exactly.
    thin = decide(_arm(600, 6), _arm(12, 4))
    assert thin["verdict"] == report.WORSE
    assert thin["failures"]["test"]["method"] == decisions.FISHER_MID_P
    assert "(one-sided fisher mid-p p < 0.0001, α 0.025)" in thin["reason"]


def test_more_requests_over_the_ttft_slo_is_worse_even_without_failures():
    result = decide(_arm(400, 0, slow=20), _arm(400, 0, slow=100))
    assert result["failures"]["outcome"] == report.NON_INFERIOR
    assert result["verdict"] == report.WORSE
    assert result["reason"].startswith("worse: share of TTFT over 2.5 s 25.00% against stable's 5.00%")


def test_alpha_margin_and_min_expected_reach_the_tests():
    strict = report.Rules(alpha=0.001)
    result = decide(_arm(300, 3), _arm(100, 5), strict)  # one-sided p ≈ 0.01
    assert result["failures"]["test"]["p_value"] > 0.001 and result["verdict"] == report.INCONCLUSIVE
    assert decide(_arm(300, 3), _arm(100, 5))["verdict"] == report.WORSE
    wide = decide(_arm(30, 0), _arm(30, 0), report.Rules(margin=0.2, latency_margin=0.2))
    assert wide["verdict"] == report.NON_INFERIOR  # 11.35 points < 20
    exact = decide(_arm(1200, 12), _arm(400, 40), report.Rules(min_expected=100))
    assert exact["failures"]["test"]["method"] == decisions.FISHER_MID_P


def test_min_requests_holds_back_any_verdict_but_worse():
    rules = report.Rules(min_requests=1000)
    result = decide(_arm(800, 8), _arm(800, 8), rules)
    assert result["verdict"] == report.INCONCLUSIVE
    assert result["more_canary_requests"] == 200
    assert "stable has 800 requests and canary has 800 requests, fewer than --min-requests 1000" in result["reason"]
    assert decide(_arm(1200, 12), _arm(400, 40), rules)["verdict"] == report.WORSE


def test_empty_arms_are_inconclusive():
    nothing = decide(_arm(0, 0), _arm(0, 0))
    assert nothing["verdict"] == report.INCONCLUSIVE
    assert nothing["latency"] is None and nothing["more_canary_requests"] is None
    assert nothing["reason"] == "inconclusive: failure ratio: canary and stable have no requests"
    # A route at 100 %: stable has nothing to compare with.
    no_stable = decide(_arm(0, 0), _arm(500, 5))
    assert no_stable["verdict"] == report.INCONCLUSIVE
    assert "no data from stable" in no_stable["reason"]
    no_canary = decide(_arm(500, 5), _arm(0, 0))
    assert no_canary["reason"].startswith("inconclusive: need about ")


def test_without_time_to_first_token_only_failures_decide():
    result = decide(_arm(800, 8, ttft=0), _arm(800, 8, ttft=0))
    assert result["verdict"] == report.NON_INFERIOR and result["latency"] is None
    assert result["reason"].endswith("latency not assessed (no time to first token in either arm)")


def test_failures_include_a_routed_arms_missing_model():
    assert report.FAILURE_TYPES == pm.SERVER_SIDE_ERRORS | {pm.ErrorType.MODEL_NOT_FOUND}
    query = report.Queries("chat", "1h").failures()
    assert "model_not_found" in query and "upstream_5xx" in query and "bad_request" not in query


# --- sessions --------------------------------------------------------------------------------

def _series(arm: str, session: str, error: str = "none", model: str = "m") -> dict[str, str]:
    return {"__name__": pm.REQUESTS.name, "endpoint": "/api/chat", "route": "chat", "arm": arm,
            "model": model, "session": session, "error_type": error}


def test_session_counts_are_each_series_growth_over_the_window():
    end = [
        (_series("canary", "a"), 10.0),                    # 4 at the start: grew 6
        (_series("canary", "a", "upstream_5xx"), 3.0),      # born in the window at 1, now 3
        (_series("canary", "b", "timeout"), 2.0),          # reset (restart, evicted label): 2 since
        (_series("canary", "b", "bad_request"), 1.0),      # client error: a request, not a failure
        (_series("stable", "none"), 50.0),
        (_series("direct", "a"), 99.0),                     # not an arm of the route
    ]
    start = [
        ({**_series("canary", "a"), "__name__": "other_spelling"}, 4.0),  # matched without __name__
        (_series("canary", "b", "timeout"), 7.0),
        (_series("stable", "none"), 50.0),                  # no growth: not counted
    ]
    counts = report.session_counts(end, start)
    assert counts["canary"].requests == {"a": 9, "b": 3}
    assert counts["canary"].failures == {"a": 3, "b": 2}
    assert counts["stable"].requests == {} and counts["stable"].failures == {}


def test_concentration_names_the_top_session_and_flags_a_cluster():
    counts = report.SessionCounts(requests={"a": 40, "b": 300, "none": 60}, failures={"a": 15, "b": 3, "none": 2})
    c = report.concentration(counts)
    assert c == {
        "requests": 400, "failures": 20, "labelled_sessions": 2, "failing_sessions": 2,
        "unlabelled_failures": 2, "top_session": "a", "top_session_failures": 15,
        "top_session_failure_share": 0.75, "top_session_request_share": 0.1, "clustered": True,
    }
    spread = report.concentration(report.SessionCounts({"a": 10, "b": 10, "c": 10}, {"a": 1, "b": 1, "c": 1}))
    assert not spread["clustered"] and spread["top_session_failure_share"] == pytest.approx(1 / 3)
    # One failure cannot cluster; failures without a session label never make a top session.
    assert not report.concentration(report.SessionCounts({"a": 10}, {"a": 1}))["clustered"]
    unlabelled = report.concentration(report.SessionCounts({"none": 10, "other": 5}, {"none": 4, "other": 4}))
    assert unlabelled["top_session"] is None and not unlabelled["clustered"]


def test_clustered_failures_make_the_verdict_say_it_may_be_overconfident():
    sessions = {
        "canary": report.concentration(report.SessionCounts({"s0": 40, "s1": 360}, {"s0": 20})),
        "stable": report.concentration(report.SessionCounts({"x": 1200}, {"x": 1, "none": 11})),
    }
    result = decide(_arm(1200, 12), _arm(400, 20), sessions=sessions)
    assert result["verdict"] == report.WORSE
    assert result["reason"].endswith(
        "; failures cluster by session (canary: 20 of 20 from one session); the tests count requests "
        "as independent, so the verdict may be overconfident")
    summary = report.describe_sessions(sessions)
    assert summary == ("canary: 20 failures, 20 from session s0 (100%; it sent 10% of canary's requests), "
                       "1 failing session; stable: 12 failures, 1 from session x (8%; it sent 100% of "
                       "stable's requests), 1 failing session, 11 without a session label")
    assert "session" not in decide(_arm(1200, 12), _arm(400, 20))["reason"]
    assert report.describe_sessions(NO_SESSIONS).startswith("no session labels in the window")


# --- option parsing -----------------------------------------------------------------------


@pytest.mark.parametrize("window", ["1h", "90m", "1h30m", "2d", "500ms", "1w"])
def test_prometheus_durations_are_accepted(window):
    assert report.parse_window(window) == window


@pytest.mark.parametrize("window", ["", "1 hour", "h", "-1h", "0m", "30m1h", "1.5h"])
def test_bad_window_exits_2_before_any_query(window, capsys):
    # Nothing listens on port 9 (discard); the window check must fail first.
    status = main(["report", "chat", "--prometheus", "http://127.0.0.1:9", f"--window={window}"])
    assert status == 2
    assert "bad --window" in capsys.readouterr().err


def test_at_accepts_unix_seconds_and_rfc3339():
    assert report.parse_at("1767225600") == 1767225600.0
    assert report.parse_at("2026-01-01T00:00:00Z") == 1767225600.0
    assert report.parse_at("2026-01-01T00:00:00") == 1767225600.0  # naive = UTC
    with pytest.raises(report.ReportError, match="bad --at"):
        report.parse_at("yesterday")


def test_route_names_cannot_break_out_of_the_label_matcher():
    query = report.Queries('x"}) or vector(1) #', "1h").requests()
    assert 'route="x\\"}) or vector(1) #"' in query


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_prometheus_exits_2_naming_the_url(capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["report", "chat", "--prometheus", url, "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach Prometheus at {url}" in err
    assert len(err.strip().splitlines()) == 1 and "api/v1/query" not in err  # one short line


def test_help_documents_the_verdict_rules(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for verdict in report.VERDICTS:
        assert f'"{verdict}' in out
    assert "need about N more canary requests" in out and "overconfident" in out
    for option in ("--alpha", "--margin", "--latency-margin", "--ttft-slo", "--min-expected",
                   "--min-requests", "--at", "--window", "--json"):
        assert option in out


@pytest.mark.parametrize(("option", "message"), [
    (["--ttft-slo", "3"], "--ttft-slo 3 is not a bucket bound of the TTFT histogram: use one of"),
    (["--alpha", "0.5"], "--alpha must be in (0, 0.5)"),
    (["--margin", "0"], "--margin and --latency-margin must be in (0, 1)"),
    (["--latency-margin", "1.5"], "--margin and --latency-margin must be in (0, 1)"),
    (["--min-expected", "-1"], "--min-expected must be ≥ 0"),
    (["--min-requests", "0"], "--min-requests must be ≥ 1"),
])
def test_bad_settings_exit_2_before_any_query(option, message, capsys):
    assert main(["report", "chat", "--prometheus", "http://127.0.0.1:9", *option]) == 2
    assert message in capsys.readouterr().err


def test_settings_come_from_the_options_then_the_proxy_configs_decisions_then_the_defaults(tmp_path):
    parser = argparse.ArgumentParser()
    report.add_arguments(parser, "report")
    assert report.rules_from(parser.parse_args(["chat", "--prometheus", "x"])) == report.Rules()
    assert (report.Rules().margin, report.Rules().latency_margin, report.Rules().ttft_slo) == (0.02, 0.05, 2.5)
    config = tmp_path / "proxy.yaml"
    config.write_text("decisions: {alpha: 0.01, failure_margin: 0.03, ttft_margin: 0.1, ttft_slo: 5}\n")
    rules = report.rules_from(parser.parse_args(["chat", "--prometheus", "x", "--config", str(config)]))
    assert (rules.alpha, rules.margin, rules.latency_margin, rules.ttft_slo) == (0.01, 0.03, 0.1, 5.0)
    rules = report.rules_from(parser.parse_args(["chat", "--prometheus", "x", "--config", str(config),
                                                 "--margin", "0.04"]))
    assert (rules.margin, rules.latency_margin) == (0.04, 0.1)  # the option wins over the file


def test_a_bad_decisions_section_in_the_config_file_exits_2_naming_the_key(tmp_path, capsys):
    config = tmp_path / "proxy.yaml"
    config.write_text("decisions: {ttft_slo: 3}\n")
    assert main(["report", "chat", "--prometheus", "http://127.0.0.1:9", "--config", str(config)]) == 2
    assert "decisions.ttft_slo: 3 is not a bucket bound" in capsys.readouterr().err


# --- the whole command against a real Prometheus ----------------------------------------

STEP_S = 60
WINDOW = "1h"
WINDOW_S = 3600
LEAD_S = 600  # zero-valued samples before the window, so every route counter starts inside it


@dataclass(frozen=True)
class Traffic:
    """One arm's hour: ``n`` requests evenly spread; request i fails (``fail_type``) when
    i % fail_every == fail_every // 2 (never in the first minute, so a Prometheus whose
    ranges exclude their left edge extrapolates to the same rounded count), is a client
    error (bad_request, must not count) when i % client_error_every == 1; durations cycle
    through ``durations``, time to first token is a quarter of the duration except that it
    is 4 s (over the 2.5 s SLO) when i % slow_every == slow_every // 2; with ``sessions``,
    request i belongs to session ``s{i % sessions}``, else to none."""

    n: int
    fail_every: int = 0
    fail_type: str = "upstream_5xx"
    client_error_every: int = 0
    durations: tuple[float, ...] = (0.2, 0.3, 0.5, 0.9, 1.5)
    slow_every: int = 0
    tpot: float = 0.02
    sessions: int = 0

    def requests(self, end: float) -> list[tuple[float, str, float, float, str]]:
        """(time, error_type, duration, TTFT, session) per request."""
        spacing = WINDOW_S / self.n
        out = []
        for i in range(self.n):
            error = "none"
            if self.fail_every and i % self.fail_every == self.fail_every // 2:
                error = self.fail_type
            elif self.client_error_every and i % self.client_error_every == 1:
                error = "bad_request"
            duration = self.durations[i % len(self.durations)]
            ttft = 4.0 if self.slow_every and i % self.slow_every == self.slow_every // 2 else duration / 4
            session = f"s{i % self.sessions}" if self.sessions else pm.NO_SESSION
            out.append((end - WINDOW_S + (i + 0.5) * spacing, error, duration, ttft, session))
        return out


SLOW = tuple(2 * d for d in Traffic(1).durations)
# route -> arm -> traffic. Worked out on paper, with the duration buckets 0.16 0.32 0.64
# 1.28 2.56 5.12: stable's five durations fill (0.16,0.32] twice, then one each of
# (0.32,0.64] (0.64,1.28] (1.28,2.56]; p95 lies 3/4 into the top one: 1.28 + 0.75·1.28 =
# 2.24 s. The slow canary's top bucket is (2.56,5.12]: p95 = 2.56 + 0.75·2.56 = 4.48 s.
SCENARIOS: dict[str, dict[str, Traffic]] = {
    "worse": {  # 10 % against 1 %; failures spread over 37 sessions
        "stable": Traffic(1200, fail_every=100, client_error_every=50, sessions=37),   # 12 failures
        "canary": Traffic(400, fail_every=10, client_error_every=50, durations=SLOW, tpot=0.04,
                          sessions=37),                                                # 40 failures
    },
    "thin": {"stable": Traffic(600, fail_every=100), "canary": Traffic(12, fail_every=3)},  # 6, 4 failures
    "equal": {"stable": Traffic(800, fail_every=100), "canary": Traffic(800, fail_every=100)},
    "quiet": {"stable": Traffic(30), "canary": Traffic(30)},
    "slow": {"stable": Traffic(400, slow_every=20), "canary": Traffic(400, slow_every=4)},  # 20, 100 slow
    # Every canary failure is session s0's (i % 20 == 10 means i % 10 == 0): 20 of 20.
    "clustered": {"stable": Traffic(2000, fail_every=100, sessions=37),
                  "canary": Traffic(400, fail_every=20, sessions=10)},
    "missing": {"stable": Traffic(300), "canary": Traffic(60, fail_every=1, fail_type="model_not_found")},
    "none": {"direct": Traffic(300, fail_every=2)},  # concrete-model traffic, not a route
}
ERROR_TYPES = ("none", "upstream_5xx", "model_not_found", "bad_request")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _sample_times(end: float) -> list[float]:
    start = end - WINDOW_S - LEAD_S
    return [start + k * STEP_S for k in range((WINDOW_S + LEAD_S) // STEP_S + 1)]


def _cumulative(times: list[float], events: list[float]) -> list[int]:
    events = sorted(events)
    counts, i = [], 0
    for t in times:
        while i < len(events) and events[i] <= t:
            i += 1
        counts.append(i)
    return counts


def openmetrics(end: float) -> str:
    """Every series the proxy would have exported, sampled each minute, as OpenMetrics.

    The route counters and histograms exist from before the window at 0, as the proxy
    creates them; the per-session counter's series are born with their first request (at
    1), as they are in the proxy."""
    times = _sample_times(end)
    route_lines = [f"# TYPE {pm.ROUTE_REQUESTS.base} counter"]
    session_lines = [f"# TYPE {pm.REQUESTS.base} counter"]
    histograms = {
        pm.REQUEST_DURATION: lambda duration, ttft, tpot: duration,
        pm.TIME_TO_FIRST_TOKEN: lambda duration, ttft, tpot: ttft,
        pm.TIME_PER_OUTPUT_TOKEN: lambda duration, ttft, tpot: tpot,
    }
    hist_lines: dict[pm.MetricSpec, list[str]] = {spec: [f"# TYPE {spec.name} histogram"] for spec in histograms}
    for route, arms in SCENARIOS.items():
        for arm, traffic in arms.items():
            base = {"endpoint": "/api/chat", "route": route, "arm": arm, "model": f"m-{route}-{arm}"}
            reqs = traffic.requests(end)
            for error in ERROR_TYPES:
                counts = _cumulative(times, [t for t, e, *_ in reqs if e == error])
                name = pm.ROUTE_REQUESTS.name + _labels(route=route, arm=arm, model=base["model"], error_type=error)
                route_lines += [f"{name} {c} {t:.0f}" for t, c in zip(times, counts)]
            for session, error in sorted({(s, e) for _, e, _, _, s in reqs}):
                counts = _cumulative(times, [t for t, e, _, _, s in reqs if (s, e) == (session, error)])
                name = pm.REQUESTS.name + _labels(**base, session=session, error_type=error)
                session_lines += [f"{name} {c} {t:.0f}" for t, c in zip(times, counts) if c]
            for spec, value_of in histograms.items():
                bucket, total, count = spec.series
                observed = [(t, value_of(d, ttft, traffic.tpot)) for t, _, d, ttft, _ in reqs]
                for le in (*spec.buckets, math.inf):
                    counts = _cumulative(times, [t for t, v in observed if v <= le])
                    name = bucket + _labels(**base, le="+Inf" if le == math.inf else repr(le))
                    hist_lines[spec] += [f"{name} {c} {t:.0f}" for t, c in zip(times, counts)]
                sums = [sum(v for tt, v in observed if tt <= t) for t in times]
                hist_lines[spec] += [f"{total}{_labels(**base)} {s:.6f} {t:.0f}" for t, s in zip(times, sums)]
                counts = _cumulative(times, [t for t, _ in observed])
                hist_lines[spec] += [f"{count}{_labels(**base)} {c} {t:.0f}" for t, c in zip(times, counts)]
    lines = route_lines + session_lines
    for spec_lines in hist_lines.values():
        lines += spec_lines
    return "\n".join(lines + ["# EOF", ""])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus serving a backfilled hour that ended five minutes ago.

    Yields (base URL, end of the data as unix seconds). Backfilled blocks must lie
    before the head; with no scrape jobs the head stays empty.
    """
    promtool = require_binary("promtool")
    prometheus_bin = require_binary("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    end = float((int(time.time()) // STEP_S) * STEP_S - 300)
    data, source = root / "data", root / "synthetic.om.txt"
    source.write_text(openmetrics(end))
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True, capture_output=True, timeout=60,
    )
    config = root / "prometheus.yml"
    config.write_text("global:\n  evaluation_interval: 1m\n")
    port = _free_port()
    log = (root / "prometheus.log").open("w")
    process = subprocess.Popen(
        [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={data}",
         "--storage.tsdb.retention.time=3650d", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited: {(root / 'prometheus.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready in 30 s: {(root / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield url, end
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _report(prometheus, route: str, capsys, *extra: str) -> tuple[int, str, str]:
    url, end = prometheus
    status = main(["report", route, "--prometheus", url, "--window", WINDOW, "--at", f"{end:.0f}", *extra])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _json(prometheus, route: str, capsys, *extra: str) -> dict:
    status, out, _ = _report(prometheus, route, capsys, "--json", *extra)
    assert status == 0
    return json.loads(out)


def test_clearly_worse_canary_json(prometheus, capsys):
    result = _json(prometheus, "worse", capsys)
    assert list(result) == ["route", "window", "at", "prometheus", "arms", "failures", "latency", "sessions",
                            "quality_worse", "verdict", "reason", "more_canary_requests", "notes", "rules"]
    stable, canary = result["arms"]["stable"], result["arms"]["canary"]
    # Client errors (bad_request) are in the totals but never count as failures.
    assert (stable["requests"], stable["failures"]) == (1200, 12)
    assert (canary["requests"], canary["failures"]) == (400, 40)
    assert canary["failure_ratio"] == pytest.approx(0.1)
    low, high = canary["failure_ratio_ci95"]
    assert low < 0.1 < high
    assert stable["latency_p95_seconds"] == pytest.approx(2.24, rel=1e-6)
    assert canary["latency_p95_seconds"] == pytest.approx(4.48, rel=1e-6)
    assert canary["ttft_p95_seconds"] > stable["ttft_p95_seconds"]
    assert (canary["ttft_observations"], canary["ttft_over_slo"]) == (400, 0)
    assert stable["tpot_mean_seconds"] == pytest.approx(0.02)
    assert stable["tokens_per_second"] == pytest.approx(50.0)
    assert canary["tokens_per_second"] == pytest.approx(25.0)
    assert result["verdict"] == report.WORSE
    failures = result["failures"]
    assert failures["test"]["method"] == decisions.Z_POOLED and failures["test"]["p_value"] < 1e-6
    assert (failures["canary"], failures["stable"]) == ([40, 400], [12, 1200])
    assert failures["difference"] == pytest.approx(0.09)
    # Every failure has its session; 40 failures over 37 sessions: no cluster.
    sessions = result["sessions"]
    assert (sessions["canary"]["requests"], sessions["canary"]["failures"]) == (400, 40)
    assert sessions["canary"]["labelled_sessions"] == 37 and sessions["canary"]["top_session_failures"] == 2
    assert not sessions["clustered"] and "overconfident" not in result["reason"]
    assert result["rules"] == {"alpha": 0.025, "margin": 0.02, "latency_margin": 0.05, "ttft_slo": 2.5,
                               "min_expected": 5.0, "min_requests": 1}
    assert any("TTFT counts successful requests" in note for note in result["notes"])


def test_clearly_worse_canary_table(prometheus, capsys):
    status, out, _ = _report(prometheus, "worse", capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[-1] == ("verdict: worse: failure ratio 10.00% against stable's 1.00% "
                         "(one-sided pooled z p < 0.0001, α 0.025)")
    requests_row = next(line for line in lines if line.startswith("requests"))
    assert requests_row.split()[1:] == ["1,200", "400"]
    assert any(line.startswith("failures [95% CI]") and "40/400 = 10.00%" in line for line in lines)
    assert any(line.startswith("TTFT > 2.5 s [95% CI]") and "0/400 = 0.00%" in line for line in lines)
    assert any(line.startswith("latency p95") and "2.24 s" in line and "4.48 s" in line for line in lines)
    assert any(line.startswith("sessions: canary: 40 failures, 2 from session s") for line in lines)
    assert any(line.startswith("note: TTFT counts successful requests that did not wait for a model load") for line in lines)
    # Columns line up: every value of the canary column starts at the same offset.
    header = next(line for line in lines if line.strip().startswith("stable"))
    column = header.index("canary")
    assert all(line[column - 2:column] == "  " for line in lines[2:11])


def test_a_thin_canary_failing_a_third_is_worse_by_the_exact_test(prometheus, capsys):
    result = _json(prometheus, "thin", capsys)
    assert (result["arms"]["canary"]["requests"], result["arms"]["canary"]["failures"]) == (12, 4)
    assert result["verdict"] == report.WORSE
    assert result["failures"]["test"]["method"] == decisions.FISHER_MID_P
    assert result["failures"]["test"]["expected_canary"] < 1


def test_equal_arms_with_plenty_of_traffic_are_non_inferior_through_prometheus(prometheus, capsys):
    result = _json(prometheus, "equal", capsys)
    assert result["arms"]["stable"] == result["arms"]["canary"]
    assert result["verdict"] == report.NON_INFERIOR and result["more_canary_requests"] is None
    assert result["failures"]["upper"] < report.MARGIN and result["latency"]["outcome"] == report.NON_INFERIOR
    status, out, _ = _report(prometheus, "equal", capsys)
    assert out.splitlines()[-1].startswith("verdict: non-inferior: failure ratio within the margin")
    assert "sessions: no session labels in the window" in out


def test_30_requests_per_arm_are_inconclusive_with_the_requests_needed(prometheus, capsys):
    result = _json(prometheus, "quiet", capsys)
    assert result["arms"]["canary"]["requests"] == result["arms"]["stable"]["requests"] == 30
    expected = decisions.assess_failures(0, 30, 0, 30, margin=report.MARGIN).more_canary_requests
    assert result["verdict"] == report.INCONCLUSIVE and result["more_canary_requests"] == expected == 355
    status, out, _ = _report(prometheus, "quiet", capsys)
    assert out.splitlines()[-1].startswith("verdict: inconclusive: need about 355 more canary requests (")
    # Wider margins settle it.
    assert _json(prometheus, "quiet", capsys, "--margin", "0.2", "--latency-margin", "0.2")["verdict"] \
        == report.NON_INFERIOR
    assert _json(prometheus, "quiet", capsys, "--margin", "0.2", "--latency-margin", "0.02")["verdict"] \
        == report.INCONCLUSIVE


def test_the_share_over_the_ttft_slo_decides_latency(prometheus, capsys):
    result = _json(prometheus, "slow", capsys)
    stable, canary = result["arms"]["stable"], result["arms"]["canary"]
    assert (stable["ttft_observations"], stable["ttft_over_slo"]) == (400, 20)
    assert (canary["ttft_observations"], canary["ttft_over_slo"]) == (400, 100)
    assert canary["ttft_over_slo_ratio"] == pytest.approx(0.25)
    assert result["failures"]["outcome"] == report.NON_INFERIOR
    assert result["latency"]["outcome"] == report.WORSE and result["latency"]["ttft_slo_seconds"] == 2.5
    assert result["verdict"] == report.WORSE
    assert result["reason"].startswith("worse: share of TTFT over 2.5 s 25.00% against stable's 5.00%")
    # The 4 s answers are under a 5 s SLO: nothing is slow, and equal arms pass.
    relaxed = _json(prometheus, "slow", capsys, "--ttft-slo", "5")
    assert relaxed["arms"]["canary"]["ttft_over_slo"] == relaxed["arms"]["stable"]["ttft_over_slo"] == 0
    assert relaxed["verdict"] == report.NON_INFERIOR
    status, out, _ = _report(prometheus, "slow", capsys)
    assert any(line.startswith("TTFT over 2.5 s: worse: canary 100/400 over the SLO") for line in out.splitlines())


def test_failures_clustered_in_one_session_make_the_verdict_say_so(prometheus, capsys):
    result = _json(prometheus, "clustered", capsys)
    canary = result["sessions"]["canary"]
    assert (canary["failures"], canary["top_session"], canary["top_session_failures"]) == (20, "s0", 20)
    assert canary["top_session_request_share"] == pytest.approx(0.1)
    assert canary["clustered"] and result["sessions"]["clustered"]
    assert not result["sessions"]["stable"]["clustered"]
    assert result["verdict"] == report.WORSE
    assert result["reason"].endswith("failures cluster by session (canary: 20 of 20 from one session); the tests "
                                     "count requests as independent, so the verdict may be overconfident")
    status, out, _ = _report(prometheus, "clustered", capsys)
    assert "canary: 20 failures, 20 from session s0 (100%; it sent 10% of canary's requests)" in out
    assert out.splitlines()[-1].endswith("so the verdict may be overconfident")


def test_a_canary_whose_model_is_missing_fails(prometheus, capsys):
    result = _json(prometheus, "missing", capsys)
    assert (result["arms"]["canary"]["requests"], result["arms"]["canary"]["failures"]) == (60, 60)
    assert result["verdict"] == report.WORSE


def test_unknown_route_is_inconclusive_not_an_error(prometheus, capsys):
    result = _json(prometheus, "no-such-route", capsys)
    assert result["arms"]["canary"]["requests"] == 0
    assert result["arms"]["canary"]["latency_p95_seconds"] is None
    assert result["verdict"] == report.INCONCLUSIVE and result["latency"] is None
    status, out, _ = _report(prometheus, "no-such-route", capsys)
    assert status == 0 and "n/a" in out
    assert out.splitlines()[-1] == "verdict: inconclusive: failure ratio: canary and stable have no requests"


def test_a_url_without_scheme_means_http(prometheus, capsys):
    url, end = prometheus
    status = main(["report", "worse", "--prometheus", url.removeprefix("http://"), "--at", f"{end:.0f}", "--json"])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["prometheus"] == url


def test_a_url_that_is_not_prometheus_exits_2(prometheus, capsys):
    url, end = prometheus
    status = main(["report", "worse", "--prometheus", f"{url}/not-here", "--at", f"{end:.0f}"])
    assert status == 2
    assert "did not answer like Prometheus" in capsys.readouterr().err


def test_a_query_prometheus_rejects_is_reported_with_its_reason(prometheus):
    url, end = prometheus
    with pytest.raises(report.ReportError, match=r"rejected a query \(HTTP 400\): .*parse error"):
        report.Prometheus(url, end, 5).by_arm("sum(")
