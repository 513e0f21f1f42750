"""``ollama-sidecar report``: the statistics by hand, the verdict rules, and the whole
command against a real Prometheus loaded with synthetic proxy metrics.

The Prometheus is Debian's binary over a TSDB backfilled with ``promtool tsdb
create-blocks-from openmetrics``; the synthetic traffic is laid out so that the counts
and quantiles the report must show can be worked out on paper (see ``SCENARIOS``).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
from dataclasses import dataclass

import pytest
import requests

from proxy import metrics as pm
from proxy.commands import report, stats
from proxy.cli import main
from tests.binaries import require_binary

# --- statistics against values worked out by hand ---------------------------------------


@pytest.mark.parametrize(
    ("failures", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.27753),  # upper bound z²/(n+z²): the interval never collapses to [0, 0]
        (10, 10, 0.72247, 1.0),
        (5, 10, 0.23659, 0.76341),
        (1, 10, 0.01788, 0.40415),
    ],
)
def test_wilson_interval_matches_hand_computed_values(failures, n, low, high):
    got_low, got_high = stats.wilson_interval(failures, n)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def test_wilson_interval_without_requests_is_none():
    assert stats.wilson_interval(0, 0) is None


def test_two_proportion_test_matches_hand_computed_values():
    # Pooled ratio 0.5, n = 200 each: se = sqrt(0.25 · 2/200) = 0.05, difference 0.1, z = 2.
    exact = stats.two_proportion_z_test(110, 200, 90, 200)
    assert exact.z == pytest.approx(2.0)
    assert exact.p_value == pytest.approx(0.0455003, abs=1e-6)  # normal table, two-sided
    # 10/100 vs 5/100: pooled 0.075, se = sqrt(0.075 · 0.925 · 0.02) = 0.037249, z = 1.3423,
    # Φ(1.3423) = 0.91025 from the table, p = 2 · (1 − 0.91025).
    textbook = stats.two_proportion_z_test(10, 100, 5, 100)
    assert textbook.z == pytest.approx(1.3423, abs=1e-4)
    assert textbook.p_value == pytest.approx(0.1795, abs=2e-4)
    # Canary first: z is negative when the canary fails less often.
    assert stats.two_proportion_z_test(5, 100, 10, 100).z == pytest.approx(-textbook.z)


@pytest.mark.parametrize(
    ("canary", "stable"),
    [((0, 500), (0, 800)), ((500, 500), (800, 800))],
    ids=["no failures anywhere", "only failures"],
)
def test_two_proportion_test_without_variance_finds_no_difference(canary, stable):
    result = stats.two_proportion_z_test(*canary, *stable)
    assert (result.z, result.p_value) == (0.0, 1.0)


def test_two_proportion_test_all_failures_against_none():
    # Pooled 0.5, n = 50 each: se = sqrt(0.25 · 0.04) = 0.1, difference 1, z = 10.
    result = stats.two_proportion_z_test(50, 50, 0, 50)
    assert result.z == pytest.approx(10.0)
    assert 0 < result.p_value < 1e-20


def test_two_proportion_test_without_requests_is_none():
    assert stats.two_proportion_z_test(0, 0, 3, 100) is None
    assert stats.two_proportion_z_test(3, 100, 0, 0) is None


# --- the verdict rules ---------------------------------------------------------------------

Arm = stats.ArmNumbers


def test_too_little_traffic_on_either_arm_is_not_enough_data():
    thin = stats.decide(Arm(1000, 0, 1.0), Arm(29, 29, 9.0))  # all 29 failed: still no verdict
    assert thin.verdict == stats.NOT_ENOUGH_DATA
    assert "canary has 29 requests" in thin.reason and "need 30" in thin.reason
    assert stats.decide(Arm(0, 0), Arm(0, 0)).verdict == stats.NOT_ENOUGH_DATA
    # Exactly min_requests is enough.
    assert stats.decide(Arm(30, 0), Arm(30, 0)).verdict == stats.NO_DIFFERENCE


def test_significantly_more_failures_is_worse_and_alpha_is_respected():
    worse = stats.decide(Arm(200, 90, 1.0), Arm(200, 110, 1.0))  # z = 2, p = 0.0455
    assert worse.verdict == stats.CANARY_WORSE
    assert "failure ratio significantly higher" in worse.reason
    strict = stats.decide(Arm(200, 90, 1.0), Arm(200, 110, 1.0), stats.Rules(alpha=0.01))
    assert strict.verdict == stats.NO_DIFFERENCE


def test_more_failures_without_significance_is_no_difference():
    assert stats.decide(Arm(100, 1, 1.0), Arm(100, 2, 1.0)).verdict == stats.NO_DIFFERENCE


def test_latency_beyond_margin_decides_when_failures_do_not():
    assert stats.decide(Arm(500, 5, 1.0), Arm(500, 5, 1.3)).verdict == stats.CANARY_WORSE
    assert stats.decide(Arm(500, 5, 1.0), Arm(500, 5, 1.19)).verdict == stats.NO_DIFFERENCE
    assert stats.decide(Arm(500, 5, 1.0), Arm(500, 5, 0.7)).verdict == stats.CANARY_BETTER
    wider = stats.decide(Arm(500, 5, 1.0), Arm(500, 5, 1.3), stats.Rules(latency_margin=0.5))
    assert wider.verdict == stats.NO_DIFFERENCE
    assert wider.latency_p95_ratio == pytest.approx(1.3)


def test_fewer_failures_is_better_unless_the_canary_is_slower():
    better = stats.decide(Arm(1000, 50, 1.0), Arm(1000, 10, 1.0))
    assert better.verdict == stats.CANARY_BETTER
    assert "significantly lower" in better.reason
    slower = stats.decide(Arm(1000, 50, 1.0), Arm(1000, 10, 2.0))
    assert slower.verdict == stats.CANARY_WORSE
    assert "p95 latency 2.00×" in slower.reason


def test_missing_latency_leaves_only_the_failure_rule():
    verdict = stats.decide(Arm(500, 5, None), Arm(500, 5, None))
    assert verdict.verdict == stats.NO_DIFFERENCE
    assert verdict.latency_p95_ratio is None and "no latency data" in verdict.reason


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
    for verdict in stats.VERDICTS:
        assert f'"{verdict}"' in out
    assert "--min-requests" in out and "--latency-margin" in out and "--at" in out


# --- the whole command against a real Prometheus ----------------------------------------

STEP_S = 60
WINDOW = "1h"
WINDOW_S = 3600
LEAD_S = 600  # zero-valued samples before the window, so every counter starts inside it


@dataclass(frozen=True)
class Traffic:
    """One arm's hour: ``n`` requests evenly spread; request i fails (upstream_5xx) when
    i % fail_every == fail_every // 2 (never in the first minute, so a Prometheus whose
    ranges exclude their left edge extrapolates to the same rounded count), is a client
    error (bad_request, must not count) when i % client_error_every == 1; durations
    cycle through ``durations``."""

    n: int
    fail_every: int = 0
    client_error_every: int = 0
    durations: tuple[float, ...] = (0.2, 0.3, 0.5, 0.9, 1.5)
    tpot: float = 0.02

    def requests(self, end: float) -> list[tuple[float, str, float]]:
        spacing = WINDOW_S / self.n
        out = []
        for i in range(self.n):
            error = "none"
            if self.fail_every and i % self.fail_every == self.fail_every // 2:
                error = "upstream_5xx"
            elif self.client_error_every and i % self.client_error_every == 1:
                error = "bad_request"
            out.append((end - WINDOW_S + (i + 0.5) * spacing, error, self.durations[i % len(self.durations)]))
        return out


SLOW = tuple(2 * d for d in Traffic(1).durations)
# route -> arm -> traffic. Worked out on paper, with the duration buckets 0.16 0.32 0.64
# 1.28 2.56 5.12: stable's five durations fill (0.16,0.32] twice, then one each of
# (0.32,0.64] (0.64,1.28] (1.28,2.56]; p95 lies 3/4 into the top one: 1.28 + 0.75·1.28 =
# 2.24 s. The slow canary's top bucket is (2.56,5.12]: p95 = 2.56 + 0.75·2.56 = 4.48 s.
SCENARIOS: dict[str, dict[str, Traffic]] = {
    "worse": {
        "stable": Traffic(1200, fail_every=100, client_error_every=50),   # 12 failures (1 %)
        "canary": Traffic(400, fail_every=8, client_error_every=50, durations=SLOW, tpot=0.04),
    },
    "thin": {"stable": Traffic(600, fail_every=100), "canary": Traffic(12, fail_every=3)},
    "equal": {"stable": Traffic(800, fail_every=100), "canary": Traffic(800, fail_every=100)},
    "none": {"direct": Traffic(300, fail_every=2)},  # concrete-model traffic, not a route
}


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
    """Every series the proxy would have exported, sampled each minute, as OpenMetrics."""
    times = _sample_times(end)
    lines = [f"# TYPE {pm.ROUTE_REQUESTS.base} counter"]
    histograms = {
        pm.REQUEST_DURATION: lambda duration, tpot: duration,
        pm.TIME_TO_FIRST_TOKEN: lambda duration, tpot: duration / 4,
        pm.TIME_PER_OUTPUT_TOKEN: lambda duration, tpot: tpot,
    }
    hist_lines: dict[pm.MetricSpec, list[str]] = {spec: [f"# TYPE {spec.name} histogram"] for spec in histograms}
    for route, arms in SCENARIOS.items():
        for arm, traffic in arms.items():
            base = {"endpoint": "/api/chat", "route": route, "arm": arm, "model": f"m-{route}-{arm}"}
            reqs = traffic.requests(end)
            for error in ("none", "upstream_5xx", "bad_request"):
                counts = _cumulative(times, [t for t, e, _ in reqs if e == error])
                name = pm.ROUTE_REQUESTS.name + _labels(route=route, arm=arm, model=base["model"], error_type=error)
                lines += [f"{name} {c} {t:.0f}" for t, c in zip(times, counts)]
            for spec, value_of in histograms.items():
                bucket, total, count = spec.series
                observed = [(t, value_of(d, traffic.tpot)) for t, _, d in reqs]
                for le in (*spec.buckets, math.inf):
                    counts = _cumulative(times, [t for t, v in observed if v <= le])
                    name = bucket + _labels(**base, le="+Inf" if le == math.inf else repr(le))
                    hist_lines[spec] += [f"{name} {c} {t:.0f}" for t, c in zip(times, counts)]
                sums = [sum(v for tt, v in observed if tt <= t) for t in times]
                hist_lines[spec] += [f"{total}{_labels(**base)} {s:.6f} {t:.0f}" for t, s in zip(times, sums)]
                counts = _cumulative(times, [t for t, _ in observed])
                hist_lines[spec] += [f"{count}{_labels(**base)} {c} {t:.0f}" for t, c in zip(times, counts)]
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


def test_clearly_worse_canary_json(prometheus, capsys):
    status, out, _ = _report(prometheus, "worse", capsys, "--json")
    assert status == 0
    result = json.loads(out)
    assert list(result) == ["route", "window", "at", "prometheus", "arms", "comparison",
                            "verdict", "reason", "rules"]
    stable, canary = result["arms"]["stable"], result["arms"]["canary"]
    # Client errors (bad_request) are in the totals but never count as failures.
    assert (stable["requests"], stable["failures"]) == (1200, 12)
    assert (canary["requests"], canary["failures"]) == (400, 50)
    assert canary["failure_ratio"] == pytest.approx(0.125)
    low, high = canary["failure_ratio_ci95"]
    assert low < 0.125 < high
    assert stable["latency_p95_seconds"] == pytest.approx(2.24, rel=1e-6)
    assert canary["latency_p95_seconds"] == pytest.approx(4.48, rel=1e-6)
    assert canary["ttft_p95_seconds"] > stable["ttft_p95_seconds"]
    assert stable["tpot_mean_seconds"] == pytest.approx(0.02)
    assert stable["tokens_per_second"] == pytest.approx(50.0)
    assert canary["tokens_per_second"] == pytest.approx(25.0)
    assert result["comparison"]["p_value"] < 1e-6
    assert result["comparison"]["latency_p95_ratio"] == pytest.approx(2.0)
    assert result["verdict"] == stats.CANARY_WORSE


def test_clearly_worse_canary_table(prometheus, capsys):
    status, out, _ = _report(prometheus, "worse", capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[-1].startswith("verdict: canary worse — failure ratio significantly higher")
    requests_row = next(line for line in lines if line.startswith("requests"))
    assert requests_row.split()[1:] == ["1,200", "400"]
    assert any(line.startswith("latency p95") and "2.24 s" in line and "4.48 s" in line for line in lines)
    # Columns line up: every value of the canary column starts at the same offset.
    header = next(line for line in lines if line.strip().startswith("stable"))
    column = header.index("canary")
    assert all(line[column - 2:column] == "  " for line in lines[2:11])


def test_thin_canary_is_not_enough_data(prometheus, capsys):
    status, out, _ = _report(prometheus, "thin", capsys, "--json")
    assert status == 0
    result = json.loads(out)
    assert result["arms"]["canary"]["requests"] == 12
    assert result["verdict"] == stats.NOT_ENOUGH_DATA
    status, out, _ = _report(prometheus, "thin", capsys)
    assert out.splitlines()[-1].startswith("verdict: not enough data — canary has 12 requests")


def test_equal_arms_show_no_significant_difference(prometheus, capsys):
    status, out, _ = _report(prometheus, "equal", capsys, "--json")
    result = json.loads(out)
    assert status == 0
    assert result["arms"]["stable"] == result["arms"]["canary"]
    assert result["comparison"]["p_value"] == pytest.approx(1.0)
    assert result["verdict"] == stats.NO_DIFFERENCE
    status, out, _ = _report(prometheus, "equal", capsys)
    assert "verdict: no significant difference" in out


def test_unknown_route_is_not_enough_data_not_an_error(prometheus, capsys):
    status, out, _ = _report(prometheus, "no-such-route", capsys, "--json")
    assert status == 0
    result = json.loads(out)
    assert result["arms"]["canary"]["requests"] == 0
    assert result["arms"]["canary"]["latency_p95_seconds"] is None
    assert result["verdict"] == stats.NOT_ENOUGH_DATA
    status, out, _ = _report(prometheus, "no-such-route", capsys)
    assert status == 0 and "n/a" in out


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
