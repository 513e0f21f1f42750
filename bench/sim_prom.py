"""Prometheus semantics for the decisions simulation (bench/decisions_sim.py), in plain Python.

What Prometheus does with the rollback alert, step by step, small enough to check against
the real thing: counters scraped at a fixed interval; ``rate()`` over a range with
Prometheus' extrapolation (``extrapolatedRate`` in promql/functions.go, 2.x semantics:
the range includes both ends); the three recording rules the rollback alerts read;
the alert expressions (the production one and the candidate forms); and the alert state
machine (``for``, ``keep_firing_for``). ``bench/sim_vec.py`` does the same with numpy
over thousands of simulated days; this module is the reference it is checked against,
and the one ``tests/test_decisions_sim.py`` checks against promtool (no numpy needed).

Everything here is for two arms (``canary``, ``stable``) of one route, each with two
counter series (``error_type="none"`` and one server-side error type), all of them
existing from the proxy's start at 0, as ``ollama_proxy_route_requests_total`` does.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = ROOT / "provisioning" / "prometheus" / "prometheus.yml"
RULES_YML = ROOT / "provisioning" / "prometheus" / "rules" / "ollama-sidecar.rules.yml"

ARMS = ("canary", "stable")
FAILED_TYPE = "upstream_5xx"  # any server-side error type; the simulation uses one
RANGE_S = 300  # the production profile's rate window (5m)

# --- the recording rules the rollback alert reads (copied from the production profile) ---

ON = "host, route"  # what the recording rules keep besides arm: a route on one host (prometheus.yml's `host`)
REQUESTS = "route_arm:ollama_proxy_requests:rate"
FAILED = "route_arm:ollama_proxy_requests_failed:rate"
RATIO = "route_arm:ollama_proxy_requests_failed_per_requests:ratio_rate"
SERVER_SIDE = "connect|stream_interrupted|timeout|upstream_5xx|upstream_invalid"

RECORDING_RULES = (
    (REQUESTS, 'sum by (host, route, arm) (rate(ollama_proxy_route_requests_total{job="ollama-proxy"}[5m]))'),
    (FAILED, 'sum by (host, route, arm) (rate(ollama_proxy_route_requests_total{job="ollama-proxy", '
             f'error_type=~"{SERVER_SIDE}"}}[5m]))\nor\n0 * {REQUESTS}'),
    (RATIO, f"{FAILED}\n/\n{REQUESTS}"),
)


def intervals(path: Path = PROMETHEUS_YML) -> tuple[int, int]:
    """(scrape, evaluation) interval in seconds from the shipped prometheus.yml."""
    cfg = yaml.safe_load(path.read_text())["global"]
    return _seconds(cfg.get("scrape_interval", "1m")), _seconds(cfg.get("evaluation_interval", "1m"))


def _seconds(duration: str) -> int:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit) and duration[: -len(unit)].isdigit():
            return int(int(duration[: -len(unit)]) * units[unit])
    raise ValueError(f"cannot read duration {duration!r}")


def production_rule(name: str = "OllamaCanaryErrorRateHigh", path: Path = RULES_YML) -> dict | None:
    """The rule ``name`` as the production rules file has it now (others may change it)."""
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return rule
    return None


# --- rate() ------------------------------------------------------------------------------

def prom_rate(samples: Sequence[tuple[int, float]], t_ms: int, range_ms: int = RANGE_S * 1000,
              left_open: bool = False) -> float | None:
    """``rate(x[range])`` at ``t_ms`` over one counter's ``(t_ms, value)`` samples.

    Prometheus' ``extrapolatedRate`` (isCounter, isRate): the increase between the first and
    the last sample in the range (resets added back), extrapolated to the range's ends when
    a sample is within 1.1 average intervals of an end (else by half an interval), never
    past the counter's zero point; divided by the range. ``None`` with fewer than two
    samples. Prometheus 2.x selects ``[t − range, t]`` (``left_open=False``); 3.x drops
    a sample exactly at ``t − range`` (``left_open=True``). The operations are Go's, in
    Go's order, so the result is the same double.
    """
    start, end = t_ms - range_ms, t_ms
    window = [(t, v) for t, v in samples if (start < t if left_open else start <= t) and t <= end]
    if len(window) < 2:
        return None
    result = window[-1][1] - window[0][1]
    last = 0.0
    for _, v in window:
        if v < last:
            result += last
        last = v
    to_start = (window[0][0] - start) / 1000
    to_end = (end - window[-1][0]) / 1000
    sampled = (window[-1][0] - window[0][0]) / 1000
    average = sampled / (len(window) - 1)
    if result > 0 and window[0][1] >= 0:
        to_zero = sampled * (window[0][1] / result)
        if to_zero < to_start:
            to_start = to_zero
    threshold = average * 1.1
    extrapolate = sampled
    extrapolate += to_start if to_start < threshold else average / 2
    extrapolate += to_end if to_end < threshold else average / 2
    factor = extrapolate / sampled
    factor /= range_ms / 1000  # isRate
    return result * factor


# --- the rules -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Values:
    """The recorded series of both arms at one evaluation (NaN where Prometheus has NaN,
    ``None`` where it has no sample)."""

    requests: Mapping[str, float | None]  # REQUESTS{arm}
    failed: Mapping[str, float | None]  # FAILED{arm}
    ratio: Mapping[str, float | None]  # RATIO{arm}


def _gt(a: float | None, b: float) -> bool:
    return a is not None and a > b  # NaN compares false, as in Go


def _ge(a: float | None, b: float) -> bool:
    return a is not None and a >= b


@dataclass(frozen=True)
class CurrentRule:
    """OllamaCanaryErrorRateHigh as shipped (production profile, commit bd4079d): a fixed
    threshold on the canary's 5m failure ratio, 2 points above stable's, ``for: 2m``;
    matched on ``(host, route)`` as the recording rules now group (for one host the same)."""

    threshold: float = 0.05
    margin: float = 0.02
    min_rate: float = 0.1
    for_s: int = 120
    keep_firing_s: int = 1800
    name: str = "current"

    def expr(self) -> str:
        c, s = '{arm="canary"}', '{arm="stable"}'
        return (f"{RATIO}{c} > {self.threshold:g}\n"
                f"and on ({ON}) {REQUESTS}{c} >= {self.min_rate:g}\n"
                f"and on ({ON}) (\n"
                f"  {RATIO}{c}\n"
                f"  - on ({ON}) (\n"
                f"    ({RATIO}{s} and on ({ON}) {REQUESTS}{s} >= {self.min_rate:g})\n"
                f"    or on ({ON}) 0 * {RATIO}{c}\n"
                f"  )\n"
                f") > {self.margin:g}")

    def holds(self, v: Values) -> bool:
        ratio_c = v.ratio["canary"]
        if not _gt(ratio_c, self.threshold) or not _ge(v.requests["canary"], self.min_rate):
            return False
        stable = v.ratio["stable"] if (v.ratio["stable"] is not None
                                       and _ge(v.requests["stable"], self.min_rate)) else 0 * ratio_c
        return _gt(ratio_c - stable, self.margin)

    def describe(self) -> str:
        return (f"ratio > {self.threshold:g} and ratio − stable > {self.margin:g}, "
                f"for {self.for_s // 60}m")


@dataclass(frozen=True)
class ComparativeRule:
    """The candidate form: the canary's failures in the window (the recorded rate × the
    range: an extrapolated increase) at least ``k``; the failures it would have had at
    stable's ratio at least ``m``; its ratio above ``rr`` × stable's + ``margin``;
    holding ``for``. With ``stable_floor`` > 0, stable's ratio is taken as at least that
    (``clamp_min``), so that a canary failing badly next to a stable that hardly ever
    fails still has expected failures to be judged by.
    """

    k: float
    m: float
    rr: float
    margin: float
    for_s: int
    keep_firing_s: int = 1800
    range_s: int = RANGE_S
    stable_floor: float = 0.0
    name: str = "proposed"

    def stable(self) -> str:
        ratio = f'{RATIO}{{arm="stable"}}'
        return f"clamp_min({ratio}, {self.stable_floor:g})" if self.stable_floor > 0 else ratio

    def expr(self) -> str:
        c, s, w = '{arm="canary"}', self.stable(), self.range_s
        return (f"{RATIO}{c}\n"
                f"and on ({ON}) {FAILED}{c} * {w} >= {self.k:g}\n"
                f"and on ({ON}) {REQUESTS}{c} * on ({ON}) {s} * {w} >= {self.m:g}\n"
                f"and on ({ON}) {RATIO}{c} > on ({ON}) {self.rr:g} * {s} + {self.margin:g}")

    def holds(self, v: Values) -> bool:
        ratio_c, ratio_s = v.ratio["canary"], v.ratio["stable"]
        if ratio_c is None or ratio_s is None or v.failed["canary"] is None or v.requests["canary"] is None:
            return False
        if self.stable_floor > 0:
            ratio_s = ratio_s if math.isnan(ratio_s) else max(ratio_s, self.stable_floor)  # Go's math.Max
        return (v.failed["canary"] * self.range_s >= self.k
                and v.requests["canary"] * ratio_s * self.range_s >= self.m
                and ratio_c > self.rr * ratio_s + self.margin)

    def describe(self) -> str:
        floor = f", stable ratio at least {self.stable_floor:g}" if self.stable_floor > 0 else ""
        return (f"k {self.k:g}, m {self.m:g}, RR {self.rr:g}, margin {self.margin:g}{floor}, "
                f"for {_duration(self.for_s)}")


Rule = CurrentRule | ComparativeRule


def _duration(seconds: int) -> str:
    if seconds == 0:
        return "0s"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def rule_yaml(rule: Rule, alert: str) -> dict:
    out: dict = {"alert": alert, "expr": rule.expr()}
    if rule.for_s:
        out["for"] = _duration(rule.for_s)
    if rule.keep_firing_s:
        out["keep_firing_for"] = _duration(rule.keep_firing_s)
    out["labels"] = {"action": "rollback"}
    return out


# --- evaluating the recorded series and the rules -----------------------------------------

@dataclass(frozen=True)
class Series:
    """Counters of one route: ``counters[(arm, failed)]`` is the list of values at
    scrapes ``offset_ms + k·scrape_ms``, k = 0, 1, ..."""

    counters: Mapping[tuple[str, bool], Sequence[float]]
    scrape_ms: int
    offset_ms: int = 0

    def samples(self, key: tuple[str, bool]) -> list[tuple[int, float]]:
        return [(self.offset_ms + k * self.scrape_ms, float(v)) for k, v in enumerate(self.counters[key])]


def recorded(series: Series, t_ms: int, range_ms: int = RANGE_S * 1000, left_open: bool = False) -> Values:
    """The three recording rules at ``t_ms``, for both arms (sum by arm: the success series'
    rate plus the failure series' rate, each extrapolated on its own)."""
    requests, failed, ratio = {}, {}, {}
    for arm in ARMS:
        ok = prom_rate(series.samples((arm, False)), t_ms, range_ms, left_open)
        bad = prom_rate(series.samples((arm, True)), t_ms, range_ms, left_open)
        total = None if ok is None else ok + bad  # both series have the same timestamps
        requests[arm], failed[arm] = total, bad
        ratio[arm] = None if total is None else (bad / total if total else math.nan)  # Go: 0/0 = NaN
    return Values(requests, failed, ratio)


INACTIVE, PENDING, FIRING = "inactive", "pending", "firing"


def alert_states(conditions: Iterable[bool], eval_ms: int, for_s: int, keep_firing_s: int = 0) -> list[str]:
    """Prometheus' alert state machine (rules/alerting.go) over one series' condition at
    evaluations ``0, eval_ms, 2·eval_ms, ...``: pending from the first true evaluation,
    firing once ``t − activeAt >= for``; a false evaluation drops a pending alert and
    resolves a firing one unless it is within ``keep_firing_for`` of the first false
    evaluation."""
    states, state, active_at, keep_since = [], INACTIVE, 0, None
    for i, holds in enumerate(conditions):
        t = i * eval_ms
        if holds:
            keep_since = None
            if state == INACTIVE:
                state, active_at = PENDING, t
        elif state == FIRING and keep_firing_s > 0:
            if keep_since is None:
                keep_since = t
            if t - keep_since >= keep_firing_s * 1000:
                state, keep_since = INACTIVE, None
        else:
            state, keep_since = INACTIVE, None
        if state == PENDING and t - active_at >= for_s * 1000:
            state = FIRING
        states.append(state)
    return states


def evaluate(series: Series, rules: Sequence[Rule], eval_ms: int, evals: int,
             range_ms: int = RANGE_S * 1000, left_open: bool = False) -> tuple[list[Values], list[list[str]]]:
    """Recorded values at each evaluation and each rule's alert state there."""
    values = [recorded(series, i * eval_ms, range_ms, left_open) for i in range(evals)]
    states = [alert_states([r.holds(v) for v in values], eval_ms, r.for_s, r.keep_firing_s) for r in rules]
    return values, states


def seeded_series(seed: int, minutes: int, scrape_s: int, canary_rps: float, weight: float,
                  canary_p: Sequence[tuple[float, float]], stable_p: float) -> Series:
    """A short seeded series in plain Python (no numpy): Poisson requests per scrape interval
    for each arm (stable at ``(1 − weight)/weight`` times the canary's rate), binomial
    failures; ``canary_p`` is a list of ``(from minute, failure probability)``."""
    import random

    rng = random.Random(seed)

    def poisson(mean: float) -> int:  # Knuth: fine for the small means of a test
        limit, k, prod = math.exp(-mean), 0, rng.random()
        while prod > limit:
            k += 1
            prod *= rng.random()
        return k

    rates = {"canary": canary_rps, "stable": canary_rps * (1 - weight) / weight}
    counters: dict[tuple[str, bool], list[float]] = {(a, f): [0.0] for a in ARMS for f in (False, True)}
    for k in range(1, minutes * 60 // scrape_s + 1):
        minute = (k * scrape_s) / 60
        for arm in ARMS:
            p = stable_p if arm == "stable" else [q for start, q in canary_p if start <= minute][-1]
            n = poisson(rates[arm] * scrape_s)
            bad = sum(rng.random() < p for _ in range(n))
            counters[(arm, False)].append(counters[(arm, False)][-1] + n - bad)
            counters[(arm, True)].append(counters[(arm, True)][-1] + bad)
    return Series(counters, scrape_s * 1000)


# --- promtool ------------------------------------------------------------------------------

def promtool() -> str | None:
    return shutil.which("promtool")


ROUTE_LABELS = 'job="ollama-proxy",instance="p1",host="local",route="chat"'


def series_name(arm: str, failed: bool) -> str:
    error_type = FAILED_TYPE if failed else "none"
    return (f'ollama_proxy_route_requests_total{{{ROUTE_LABELS},arm="{arm}",model="m-{arm}",'
            f'error_type="{error_type}"}}')


def promtool_files(series: Series, rules: Sequence[Rule], eval_ms: int, evals: int,
                   values: Sequence[Values], states: Sequence[Sequence[str]], every: int = 1) -> tuple[dict, dict]:
    """A rules file (the recording rules and ``rules`` as alerts ``Rule0``, ``Rule1``, ...) and a
    promtool test that expects, at every ``every``-th evaluation, the recorded canary
    series and each alert's firing state as given (from :func:`evaluate` or sim_vec).
    promtool places samples at ``k·interval`` from 0, so ``series.offset_ms`` must be 0."""
    if series.offset_ms != 0:
        raise ValueError("promtool's input series start at 0")
    group = [{"record": name, "expr": expr} for name, expr in RECORDING_RULES]
    group += [rule_yaml(rule, f"Rule{j}") for j, rule in enumerate(rules)]
    rules_file = {"groups": [{"name": "decisions-sim", "rules": group}]}
    inputs = [{"series": series_name(arm, failed), "values": " ".join(f"{v:g}" for v in series.counters[(arm, failed)])}
              for arm in ARMS for failed in (False, True)]
    alert_tests, expr_tests = [], []
    for i in range(0, evals, every):
        t = f"{i * eval_ms // 1000}s"
        for j in range(len(rules)):
            firing = states[j][i] == FIRING
            alert_tests.append({"eval_time": t, "alertname": f"Rule{j}", "exp_alerts": [
                {"exp_labels": {"action": "rollback", "host": "local", "route": "chat", "arm": "canary"}}] if firing else []})
        for name, got in ((REQUESTS, values[i].requests), (FAILED, values[i].failed), (RATIO, values[i].ratio)):
            v = got["canary"]
            if v is not None and math.isnan(v):
                continue  # NaN never equals NaN: nothing to compare
            samples = [] if v is None else [{"labels": f'{name}{{arm="canary", host="local", route="chat"}}', "value": v}]
            expr_tests.append({"expr": f'{name}{{arm="canary"}}', "eval_time": t, "exp_samples": samples})
    test = {"rule_files": ["rules.yml"], "evaluation_interval": f"{eval_ms // 1000}s",
            "tests": [{"interval": f"{series.scrape_ms // 1000}s", "input_series": inputs,
                       "alert_rule_test": alert_tests, "promql_expr_test": expr_tests}]}
    return rules_file, test


@dataclass(frozen=True)
class PromtoolResult:
    ok: bool
    failures: int  # failed expectations (alerts and expressions)
    output: str


def run_promtool(rules_file: dict, test: dict, binary: str | None = None, timeout: float = 600) -> PromtoolResult:
    """Write the files to a temporary directory and run ``promtool test rules``."""
    binary = binary or promtool()
    if binary is None:
        raise FileNotFoundError("promtool not found")
    with tempfile.TemporaryDirectory(prefix="decisions-sim-") as tmp:
        Path(tmp, "rules.yml").write_text(yaml.safe_dump(rules_file, sort_keys=False, width=1000))
        Path(tmp, "test.yml").write_text(yaml.safe_dump(test, sort_keys=False, width=1 << 30))
        proc = subprocess.run([binary, "test", "rules", "test.yml"], cwd=tmp, capture_output=True, text=True,
                              timeout=timeout)
    output = proc.stdout + proc.stderr
    failures = output.count("alertname:") + output.count("expr:")
    return PromtoolResult(proc.returncode == 0, failures, output)
