"""``ollama-sidecar rollout start|status|pause|resume|promote|abort``: progressive rollouts
from a shell, through the admin API (exit codes as the other commands: 0 done, 1 refused,
2 usage, 3 proxy unreachable, 4 wrong token)."""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any
from urllib.parse import quote

from proxy.commands.ctl import EXIT_OK, UsageError, _call
from proxy.commands.ctl import add_arguments as add_common_arguments
from proxy.commands.ctl import usage_errors_exit_2

ACTIONS = ("start", "status", "pause", "resume", "promote", "abort")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_common_arguments(parser, "status")
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("route", nargs="?", help="route alias (status: all routes when left out)")
    parser.add_argument("--canary", help="start: the model to roll out (default: the route's canary)")
    parser.add_argument("--steps", help="start: percentages, e.g. 1,5,20,50 or 1,5,20,50,pause (100 is always last)")
    parser.add_argument("--interval", help="start: least time at each step, e.g. 300 or 5m")
    parser.add_argument("--full", action="store_true", help="promote: straight to 100 %% and promotion")


def _steps(text: str) -> list[float | str]:
    out: list[float | str] = []
    for part in text.split(","):
        part = part.strip()
        if part == "pause":
            out.append(part)
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise UsageError(f"--steps: {part!r} is neither a percentage nor 'pause'") from None
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "never at the current rate (no canary traffic)"
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def format_rollout(doc: dict[str, Any]) -> str:
    route = doc["route"]
    if doc.get("phase") == "idle":
        return f"route {route}: no rollout"
    lines = [f"route {route}: rollout of {doc['canary']} — {doc['phase'].upper()}, step {doc['step']} of "
             f"{doc['steps']} at {doc['weight']:g}% (plan {' → '.join(f'{w:g}%' for w, _ in doc['plan'])})"]
    lines.append(f"  at this step {doc['step_elapsed']:.0f}s of {doc['interval']:g}s, "
                 f"{doc['at_step']['canary']['requests']} of {doc['min_requests']} canary requests"
                 + (f" ({doc['canary_rate']:.2f}/s)" if doc.get("canary_rate") else ""))
    if doc.get("reason"):
        lines.append(f"  {doc['reason']}")
    need = doc.get("need") or {}
    if need.get("canary_requests") or need.get("seconds"):
        lines.append(f"  still needs about {need.get('canary_requests') or 0} canary requests, "
                     f"{_duration(need.get('seconds'))}")
    for name, check in doc.get("checks", {}).items():
        (c_e, c_n), (s_e, s_n) = check["canary"], check["stable"]
        ratio = lambda e, n: f"{e}/{n} = {e / n:.2%}" if n else "0/0"  # noqa: E731
        limit = f"max {check['max']:.1%}, " if check.get("max") is not None else ""
        test = check.get("sequential_test") or {}
        llr = f", sequential test {test['llr']:.1f}{' WORSE' if test.get('decision') == 'worse' else ''}" \
            if "llr" in test else ""
        slo = f" (first token > {check['slo']:g}s)" if check.get("slo") else ""
        lines.append(f"  {name}{slo}: canary {ratio(c_e, c_n)}, stable {ratio(s_e, s_n)} "
                     f"[{limit}non-inferiority margin {check['max_over_stable']:.1%}{llr}]")
    for h in doc.get("history", []):
        when = time.strftime("%H:%M:%S", time.localtime(h["at"]))
        extra = {k: v for k, v in h.items() if k not in ("event", "at", "weight")}
        lines.append(f"  {when} {h['event']} at {h['weight']:g}% {json.dumps(extra, sort_keys=True) if extra else ''}"
                     .rstrip())
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    if args.action != "status" and not args.route:
        raise UsageError(f"rollout {args.action} needs a ROUTE")
    path = f"/admin/routes/{quote(args.route, safe='')}/rollout" if args.route else "/admin/rollouts"
    if args.action == "status":
        code, doc = _call(args, "GET", path)
    elif args.action == "start":
        body: dict[str, Any] = {}
        if args.canary:
            body["canary"] = args.canary
        if args.steps:
            body["steps"] = _steps(args.steps)
        if args.interval:
            body["interval"] = args.interval
        code, doc = _call(args, "POST", path, body, timeout=900)  # the canary may take minutes to load
    else:
        code, doc = _call(args, "POST", f"{path}/{args.action}", {"full": True} if args.full else {})
    if code != EXIT_OK:
        return code
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif "rollouts" in doc:
        print("\n".join(format_rollout(d) for d in doc["rollouts"]))
    else:
        print(format_rollout(doc))
    return EXIT_OK


run = usage_errors_exit_2(_run)
