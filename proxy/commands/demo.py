"""``ollama-sidecar demo``: watch a canary climb a grey-release ramp, and a bad one get
rolled back, on any machine, no GPU.

The stories (``--scenario``), on a route ``chat`` with a stable model and a canary
fine-tune (both served by the Ollama simulator) and sticky sessions:

* ``rollout`` (the default): a progressive rollout, 5 → 20 → 50 → 100 %, with a few
  seconds per step. At 50 % the canary starts failing; the rollout's gate (or, with
  Prometheus and Alertmanager installed, the shipped rollback alert) rolls the route back.
* ``rollout-ok``: the same ramp with a healthy canary, promoted to stable at the end.
* ``failover``: two simulated Ollama servers share the traffic; one is killed (SIGKILL).
  Only the streams that were in flight on it fail, each with an in-protocol error line;
  every other request succeeds, moved to the survivor before its first byte.
* ``quality``: a 50/50 split whose canary starts answering worse without any HTTP error:
  its simulated users regenerate and rate down, ``OllamaCanaryQualityRegression`` fires
  and the route is rolled back (needs Prometheus and Alertmanager).
* ``rollback``: a 50/50 split, then the canary breaks; the shipped alert rules fire
  ``OllamaCanaryErrorRateHigh``, Alertmanager calls the proxy's webhook and the proxy rolls
  the route back; without them, the proxy's own circuit breaker does it.

Either way the stable arm never sees an error. Every process is stopped on Ctrl-C or when done.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import requests

from proxy.commands.stack import (CANARY_MODEL, DEMO_KEYS, DEMO_TENANTS, ROUTE, STABLE_MODEL, LocalStack, StackOptions,
                                  monitoring_available)
from proxy.commands.traffic import TrafficDriver

SCENARIOS = ("rollout", "rollout-ok", "rollback", "failover", "quality")
# Short steps so the whole ramp fits in a minute; min_requests keeps each step honest.
DEMO_ROLLOUT = {"steps": [5, 20, 50], "interval": 4, "min_requests": 10, "stall_after": 600,
                "checks": {"failure_ratio": {"max": 0.1, "max_over_stable": 0.1}}}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--scenario", choices=SCENARIOS, default="rollout",
                        help="rollout: a ramp whose canary breaks at 50 %% and is rolled back (default); "
                             "rollout-ok: a healthy canary promoted; rollback: a 50/50 split whose canary breaks; "
                             "failover: two Ollama servers share the traffic and one dies; quality: a canary that "
                             "answers worse without any error, rolled back on its users' regenerations and ratings")
    parser.add_argument("--fault-after", type=float, default=10.0, help="rollback scenario: seconds of healthy "
                        "traffic before the canary breaks (default 10)")
    parser.add_argument("--error-rate", type=float, default=0.6, help="share of canary requests that fail "
                        "once broken (default 0.6)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up waiting for the rollback after "
                        "this many seconds (default 60)")
    parser.add_argument("--linger", type=float, default=60.0, help="keep everything running this long after "
                        "the rollback so you can open the URLs (default 60; Ctrl-C stops sooner)")
    parser.add_argument("--no-monitoring", action="store_true", help="skip Prometheus and Alertmanager even "
                        "when installed (the breaker acts instead)")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _announce_alerts(stack: LocalStack, t: float, seen: set[str]) -> list[str]:
    """The alerts firing now; a line for each one that was not firing before."""
    alerts = stack.firing_alerts()
    for name in sorted(set(alerts) - seen):
        _say(f"  {t:4.0f}s >>> Prometheus: alert {name} is firing")
    seen |= set(alerts)
    return alerts


def _arm_stats(outcomes: list[Any], arm: str, span: float) -> str:
    mine = [o for o in outcomes if o.arm == arm]
    if not mine:
        return f"{0:5.1f}/s    -  "
    failed = sum(1 for o in mine if not o.completed)
    return f"{len(mine) / span:5.1f}/s {failed / len(mine):5.0%}"


def _urls(stack: LocalStack) -> list[str]:
    cli = Path(sys.executable).parent / "ollama-sidecar"
    command = os.path.relpath(cli) if cli.exists() else "ollama-sidecar"
    lines = [f"  proxy metrics   {stack.url('proxy')}/metrics",
             f"  exporter        {stack.url('exporter')}/metrics",
             f"  route status    OLLAMA_SIDECAR_URL={stack.url('proxy')} OLLAMA_SIDECAR_ADMIN_TOKEN_FILE="
             f"{stack.token_file} {command} status",
             f"  who used the GPU OLLAMA_SIDECAR_URL={stack.url('proxy')} {command} usage   (tenants "
             f"{' and '.join(DEMO_TENANTS)})"]
    if stack.monitoring:
        from proxy.monitoring import FAILED_RATIO
        expr = urllib.parse.quote(f'{FAILED_RATIO}{{route="{ROUTE}"}}')
        lines += [f"  canary vs stable failure ratio (Prometheus)  "
                  f"{stack.url('prometheus')}/graph?g0.expr={expr}&g0.tab=0&g0.range_input=5m",
                  f"  alerts (Prometheus)  {stack.url('prometheus')}/alerts",
                  f"  Alertmanager         {stack.url('alertmanager')}/#/alerts"]
    return lines


def stack_options(workdir: Path, monitoring: bool, preferred_ports: bool = True,
                  scenario: str = "rollback") -> StackOptions:
    """The demo's stack (also what the every-panel-has-data test starts): a 50/50 route (the
    rollout scenarios start at 0 and ramp), the fast alert rules when Prometheus and
    Alertmanager are at hand (else the breaker acts), reconcile as the webhook's fallback,
    and two simulated GPUs."""
    breaker = None if monitoring else {"window": 10, "min_requests": 8, "failure_ratio": 0.3}
    rollout = DEMO_ROLLOUT if scenario.startswith("rollout") else None
    weight = 50 if scenario in ("rollback", "quality") else 0
    options = StackOptions(workdir=workdir, canary_weight=weight, breaker=breaker, monitoring=monitoring,
                           reconcile_interval=15.0, preferred_ports=preferred_ports, fake_gpus=2, rollout=rollout,
                           servers=2 if scenario == "failover" else 1)
    if scenario == "failover":  # answers of a second or so, so that streams are in flight when a server dies
        options.profiles = {model: dict(profile, tokens_per_second=20, output_tokens=20)
                            for model, profile in options.profiles.items()}
    return options


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a closed terminal stops the demo cleanly too
        signal.signal(sig, _interrupt)
    monitoring = monitoring_available() and not args.no_monitoring
    workdir = Path(tempfile.mkdtemp(prefix="ollama-sidecar-demo-"))
    options = stack_options(workdir, monitoring, scenario=args.scenario)
    _say({"rollout": "ollama-sidecar demo: a canary climbs a grey-release ramp, goes bad at 50 % and is rolled back "
                     "automatically (no GPU needed)\n",
          "rollout-ok": "ollama-sidecar demo: a healthy canary climbs a grey-release ramp and is promoted "
                        "(no GPU needed)\n",
          "rollback": "ollama-sidecar demo: a canary goes bad and is rolled back automatically (no GPU needed)\n",
          "failover": "ollama-sidecar demo: two Ollama servers share the traffic and one dies (no GPU needed)\n",
          "quality": "ollama-sidecar demo: a canary answers worse without a single error, and is rolled back on "
                     "its users' regenerations and ratings (no GPU needed)\n",
          }[args.scenario])
    if not monitoring:
        _say("  Prometheus/Alertmanager not used: " + ("--no-monitoring given." if args.no_monitoring else
             "not installed (or not run from the repository, whose provisioning/ holds their configs). "
             "The proxy's own circuit breaker will act.\n  For the full loop "
             "(alert rule -> Alertmanager -> webhook): sudo apt-get install prometheus prometheus-alertmanager"))
    stack = LocalStack(options)
    traffic: TrafficDriver | None = None
    try:
        _say(f"  starting: simulator, proxy, exporter ({options.fake_gpus} simulated GPUs)"
             + (", Alertmanager, Prometheus" if monitoring else "") + " …")
        stack.start()
        _say("  " + ", ".join(f"{name} {stack.url(name)}" for name in stack.processes))
        if monitoring:
            _say("  Alertmanager: rollback alerts go to the proxy's webhook; no human receiver is configured "
                 "(docs/monitoring-stack.md, \"Notifying humans\")")
        if args.scenario == "quality":
            _say(f"  route '{ROUTE}': stable {STABLE_MODEL}, canary {CANARY_MODEL} at 50% of sessions; simulated users "
                 "hold conversations, regenerate answers they reject and rate some\n")
            traffic = TrafficDriver(stack.url("proxy"), ROUTE, sessions=40, simulator=stack.url("simulator"), keys=DEMO_KEYS).start()
            outcome = _quality_timeline(stack, traffic, args)
        elif args.scenario == "failover":
            _say(f"  route '{ROUTE}': {STABLE_MODEL} on two servers ({', '.join(stack.simulators)}), sessions "
                 "sticky to a server\n")
            traffic = TrafficDriver(stack.url("proxy"), ROUTE, sessions=200, keys=DEMO_KEYS).start()
            outcome = _failover_timeline(stack, traffic, args)
        elif args.scenario == "rollback":
            _say(f"  route '{ROUTE}': stable {STABLE_MODEL}, canary {CANARY_MODEL} at 50% of sessions (sticky)\n")
            traffic = TrafficDriver(stack.url("proxy"), ROUTE, keys=DEMO_KEYS).start()
            outcome = _timeline(stack, traffic, args)
        else:
            steps = " → ".join(f"{w:g}%" for w in [*DEMO_ROLLOUT["steps"], 100])  # type: ignore[list-item]
            _say(f"  route '{ROUTE}': stable {STABLE_MODEL}; rolling out {CANARY_MODEL}: {steps}, at least "
                 f"{DEMO_ROLLOUT['interval']}s and {DEMO_ROLLOUT['min_requests']} canary requests a step (sticky "
                 "sessions)\n")
            traffic = TrafficDriver(stack.url("proxy"), ROUTE, sessions=400, keys=DEMO_KEYS).start()
            outcome = _rollout_timeline(stack, traffic, args)
        if outcome is None:
            _say(f"\n  the story did not end within {args.timeout:g}s: look at the logs in {workdir}")
            return 1
        _say("")
        if monitoring:
            _print_report(stack)
        _say("\n  open while it runs:")
        for line in _urls(stack):
            _say(line)
        if args.linger > 0:
            _say(f"\n  traffic keeps flowing (all on stable now); stopping in {args.linger:g}s, Ctrl-C to stop now.")
            time.sleep(args.linger)
        return 0
    except KeyboardInterrupt:
        _say("\n  interrupted")
        return 130
    finally:
        if traffic is not None:
            traffic.stop()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        _say("  stopped every process the demo started.")


def _timeline(stack: LocalStack, traffic: TrafficDriver, args: argparse.Namespace) -> dict[str, Any] | None:
    _say(f"  {'t':>4}  {'stable':^14}  {'canary':^14}  {'weight':>6}  {'firing alerts':<32} route")
    start = time.monotonic()
    broke_at: float | None = None
    seen_alerts: set[str] = set()
    while time.monotonic() - start < args.fault_after + args.timeout:
        time.sleep(1.0)
        now = time.monotonic()
        t = now - start
        if broke_at is None and t >= args.fault_after:
            stack.break_canary(error_rate=args.error_rate)
            broke_at = now
            _say(f"  {t:4.0f}s >>> the canary breaks: {args.error_rate:.0%} of its requests now fail with HTTP 500")
        recent = traffic.snapshot(since=now - 2.0)
        state = stack.route_state()
        alerts = _announce_alerts(stack, t, seen_alerts)
        status = f"ROLLED BACK ({state['reason']})" if state["rolled_back"] else "split"
        _say(f"  {t:4.0f}s  {_arm_stats(recent, 'stable', 2.0)}  {_arm_stats(recent, 'canary', 2.0)}  "
             f"{state['effective_weight']:5.0f}%  {', '.join(alerts) or '-':<32} {status}")
        if state["rolled_back"]:
            assert broke_at is not None
            _say(f"\n  rolled back {now - broke_at:.1f}s after the canary broke, by {state['reason']}.")
            stable_failed = [o for o in traffic.snapshot() if o.arm == "stable" and not o.completed]
            _say(f"  requests on stable that failed at any time: {len(stable_failed)}")
            return state
    return None


def _rollout_timeline(stack: LocalStack, traffic: TrafficDriver, args: argparse.Namespace) -> dict[str, Any] | None:
    from proxy.commands.rollout_ctl import format_rollout
    time.sleep(1.0)  # a little traffic on stable first
    stack.rollout("", {})
    _say(f"  {'t':>4}  {'stable':^14}  {'canary':^14}  {'weight':>6}  {'rollout':<24} {'firing alerts':<28}")
    start = time.monotonic()
    broke_at: float | None = None
    seen_alerts: set[str] = set()
    while time.monotonic() - start < args.timeout + 60:
        time.sleep(1.0)
        now = time.monotonic()
        t = now - start
        doc = stack.rollout()
        state = doc["route_state"]
        if args.scenario == "rollout" and broke_at is None and doc.get("weight", 0) >= 50 \
                and doc["phase"] == "progressing":
            stack.break_canary(error_rate=args.error_rate)
            broke_at = now
            _say(f"  {t:4.0f}s >>> at {doc['weight']:g}% the canary breaks: {args.error_rate:.0%} of its requests now "
                 "fail with HTTP 500")
        alerts = _announce_alerts(stack, t, seen_alerts)
        recent = traffic.snapshot(since=now - 2.0)
        phase = f"{doc['phase']} {doc.get('step', 0)}/{doc.get('steps', 0)}"
        _say(f"  {t:4.0f}s  {_arm_stats(recent, 'stable', 2.0)}  {_arm_stats(recent, 'canary', 2.0)}  "
             f"{state['effective_weight']:5.0f}%  {phase:<24} {', '.join(alerts) or '-':<28}")
        if doc["phase"] in ("succeeded", "failed"):
            _say("")
            _say(format_rollout(doc))
            if doc["phase"] == "failed":
                assert broke_at is not None or args.scenario != "rollout"
                _say(f"\n  rolled back {now - (broke_at or now):.1f}s after the canary broke, by "
                     f"{state['reason']}.")
            else:
                _say(f"\n  promoted: {state['stable']} is the stable model now.")
            stable_failed = [o for o in traffic.snapshot() if o.arm == "stable" and not o.completed
                             and o.model == STABLE_MODEL]
            _say(f"  requests on stable that failed at any time: {len(stable_failed)}")
            return state
    return None


def _quality_timeline(stack: LocalStack, traffic: TrafficDriver, args: argparse.Namespace) -> dict[str, Any] | None:
    _say(f"  {'t':>4}  {'stable':^14}  {'canary':^14}  {'rejected (3 s)':^17}  {'weight':>6}  {'firing alerts':<32}")
    start = time.monotonic()
    broke_at: float | None = None
    seen_alerts: set[str] = set()
    history = [traffic.tally()]
    while time.monotonic() - start < args.fault_after + args.timeout:
        time.sleep(1.0)
        now = time.monotonic()
        t = now - start
        if broke_at is None and t >= args.fault_after:
            stack.set_canary_profile(answer_quality=0.4)
            broke_at = now
            _say(f"  {t:4.0f}s >>> the canary starts answering worse: its users now reject 6 answers in 10 "
                 "(still HTTP 200, no error)")
        history.append(traffic.tally())
        old, new = history[max(0, len(history) - 4)], history[-1]
        # the share of answers the users rejected (regenerated or rated down) over the last 3 s
        regen = {arm: (new[arm][1] + new[arm][2] - old[arm][1] - old[arm][2]) / max(1, new[arm][0] - old[arm][0])
                 for arm in ("stable", "canary")}
        recent = traffic.snapshot(since=now - 2.0)
        state = stack.route_state()
        alerts = _announce_alerts(stack, t, seen_alerts)
        status = f"ROLLED BACK ({state['reason']})" if state["rolled_back"] else "split"
        _say(f"  {t:4.0f}s  {_arm_stats(recent, 'stable', 2.0)}  {_arm_stats(recent, 'canary', 2.0)}  "
             f"{regen.get('stable', 0):7.0%} {regen.get('canary', 0):7.0%}  {state['effective_weight']:5.0f}%  "
             f"{', '.join(alerts) or '-':<32} {status}")
        if state["rolled_back"]:
            assert broke_at is not None
            failed = [o for o in traffic.snapshot() if not o.completed]
            _say(f"\n  rolled back {now - broke_at:.1f}s after the canary started answering worse, by "
                 f"{state['reason']}.")
            _say(f"  failed requests on either arm at any time: {len(failed)}")
            return state
        if not stack.monitoring and broke_at is not None and now - broke_at > 10:
            _say("\n  without Prometheus and Alertmanager nothing acts on quality (the breaker counts errors, and "
                 "there are none):\n  the signals are on the proxy's /metrics "
                 "(ollama_proxy_regenerations_total, ollama_proxy_feedback_total).")
            return state
    return None


def _server_stats(outcomes: list[Any], server: str, span: float) -> str:
    mine = [o for o in outcomes if o.upstream == server]
    if not mine:
        return f"{0:5.1f}/s    -  "
    failed = sum(1 for o in mine if not o.completed)
    return f"{len(mine) / span:5.1f}/s {failed / len(mine):5.0%}"


def _upstreams_up(stack: LocalStack) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    from proxy.metrics import UPSTREAM_UP
    try:
        text = requests.get(f"{stack.url('proxy')}/metrics", timeout=2).text
    except requests.RequestException:
        return {}
    return {s.labels["upstream"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == UPSTREAM_UP.name}


def _failover_timeline(stack: LocalStack, traffic: TrafficDriver, args: argparse.Namespace) -> dict[str, Any] | None:
    first, second = stack.simulators[:2]
    _say(f"  {'t':>4}  {first:^14}  {second:^14}  {'servers up':<28}")
    start = time.monotonic()
    killed_at: float | None = None
    while time.monotonic() - start < args.fault_after + 12:
        time.sleep(1.0)
        now = time.monotonic()
        t = now - start
        if killed_at is None and t >= args.fault_after:
            stack.processes[second].kill()
            killed_at = now
            _say(f"  {t:4.0f}s >>> {second} dies (SIGKILL): its streams in flight are cut")
        recent = traffic.snapshot(since=now - 1.0)
        up = _upstreams_up(stack)
        state = ", ".join(f"{name} {'UP' if up.get(name) == 1 else 'DOWN'}" for name in (first, second))
        _say(f"  {t:4.0f}s  {_server_stats(recent, first, 1.0)}  {_server_stats(recent, second, 1.0)}  {state}")
    traffic.stop()
    assert killed_at is not None
    outcomes = traffic.snapshot()
    failed = [o for o in outcomes if not o.completed]
    in_flight = [o for o in outcomes if o.upstream == second and o.started < killed_at < o.ended]
    late = [o for o in failed if o.started >= killed_at]
    _say(f"\n  requests: {len(outcomes)}, failed: {len(failed)}; streams in flight on {second} when it died: "
         f"{len(in_flight)}")
    _say(f"  failed requests that were not in flight on {second}: {len([o for o in failed if o not in in_flight])}")
    _say(f"  requests started after it died that failed: {len(late)}")
    return {"failed": len(failed), "in_flight": len(in_flight), "late": len(late)}


def _print_report(stack: LocalStack) -> None:
    from proxy.commands import report
    parser = argparse.ArgumentParser()
    report.add_arguments(parser, "report")
    args = parser.parse_args([ROUTE, "--prometheus", stack.url("prometheus"), "--window", "5m"])
    args.command = "report"
    _say("  A/B report from Prometheus (ollama-sidecar report chat --prometheus …):")
    report.run(args)


if __name__ == "__main__":
    # `python -m proxy.commands.demo [options]` is `ollama-sidecar demo [options]`.
    from proxy.cli import main
    sys.exit(main(["demo", *sys.argv[1:]]))
