"""``ollama-sidecar status | route set | rollback | promote | resume``: the admin API from a shell.

Exit codes are for scripts: 0 done, 1 refused (unknown route, nothing to resume…),
2 usage error, 3 proxy unreachable, 4 wrong or missing admin token.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import requests

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_UNAUTHORIZED = 0, 1, 2, 3, 4


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--proxy", default=os.environ.get("OLLAMA_SIDECAR_URL", "http://127.0.0.1:11435"),
                        help="proxy base URL (env OLLAMA_SIDECAR_URL; default http://127.0.0.1:11435)")
    parser.add_argument("--token-file", help="file holding the admin token (else env OLLAMA_SIDECAR_ADMIN_TOKEN "
                        "or OLLAMA_SIDECAR_ADMIN_TOKEN_FILE)")
    parser.add_argument("--json", action="store_true", help="print the proxy's JSON answer")
    if command == "route":
        parser.add_argument("action", choices=["set"])
    if command == "session-label":
        parser.add_argument("session", help="a session or user id as clients send it (X-Session-ID, "
                            "X-User-ID or the OpenAI user field)")
    elif command != "status":
        parser.add_argument("route", help="route alias, e.g. chat")
    if command == "route":
        parser.add_argument("--stable", help="model for the stable arm")
        parser.add_argument("--canary", help="model for the canary arm ('' removes the canary)")
        parser.add_argument("--weight", type=float, help="canary weight, 0-100 (decimals allowed)")
    if command == "rollback":
        parser.add_argument("--reason", help="a note recorded with the rollback")


class UsageError(Exception):
    pass


def _token(args: argparse.Namespace) -> str | None:
    path = args.token_file or os.environ.get("OLLAMA_SIDECAR_ADMIN_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the admin token file {path}: {getattr(exc, 'strerror', None) or exc}")
    return os.environ.get("OLLAMA_SIDECAR_ADMIN_TOKEN") or None


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None,
          timeout: float = 10) -> tuple[int, Any]:
    headers = {}
    token = _token(args)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = args.proxy.rstrip("/") + path
    try:
        resp = requests.request(method, url, json=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        print(f"ollama-sidecar: cannot reach the proxy at {args.proxy}: {type(exc).__name__}", file=sys.stderr)
        return EXIT_UNREACHABLE, None
    try:
        payload = resp.json()
    except ValueError:
        payload = {"error": resp.text[:200]}
    if resp.status_code in (401, 403):
        print(f"ollama-sidecar: the proxy refused the admin request: {payload.get('error')}", file=sys.stderr)
        return EXIT_UNAUTHORIZED, payload
    if resp.status_code >= 400:
        print(f"ollama-sidecar: {payload.get('error', resp.status_code)}", file=sys.stderr)
        return EXIT_REFUSED, payload
    return EXIT_OK, payload


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _fmt_test(test: dict[str, Any] | None) -> str:
    """The breaker's sequential test: log-likelihood ratio against its threshold."""
    if not test:
        return "-"
    return f"{test['llr']:.1f}/{test['threshold']:.1f}" + (" WORSE" if test["decision"] == "worse" else "")


def format_status(doc: dict[str, Any]) -> str:
    header = ("ROUTE", "STABLE", "CANARY", "WEIGHT", "ROLLED BACK", "REASON", "SINCE",
              "STABLE RPS", "STABLE ERR", "CANARY RPS", "CANARY ERR", "CANARY TEST")
    rows = []
    for r in doc.get("routes", []):
        live = r.get("live", {})
        weight = f"{r['effective_weight']:g}%"
        if r["rolled_back"] and r.get("weight_before_rollback") is not None:
            weight += f" (was {r['weight_before_rollback']:g}%)"
        rows.append((
            r["name"], r["stable"], r.get("canary") or "-", weight, "YES" if r["rolled_back"] else "no",
            r.get("reason", "-"), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["since"])),
            f"{live.get('stable', {}).get('requests_per_second', 0):.2f}",
            _fmt_ratio(live.get("stable", {}).get("failure_ratio")),
            f"{live.get('canary', {}).get('requests_per_second', 0):.2f}",
            _fmt_ratio(live.get("canary", {}).get("failure_ratio")),
            _fmt_test(live.get("sequential_test")),
        ))
    if not rows:
        return "no routes configured (add 'routes:' to the proxy's config file)"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    if doc.get("last_reload_error"):
        lines.append(f"\nlast config reload FAILED: {doc['last_reload_error']}")
    if (state := doc.get("state")) and state.get("backend") == "redis":
        lines.append("")
        lines.append(format_shared_state(state))
    return "\n".join(lines)


def format_shared_state(state: dict[str, Any]) -> str:
    """One line on the replica's shared state: where, up or not, leader or not; a second
    line saying what follows when it is down."""
    role = "rollout leader" if state.get("leader") else "follower"
    journal = f", {state['journal_entries']} journaled rollback(s) to replay" if state.get("journal_entries") else ""
    if state.get("up"):
        return f"shared state: Redis {state['url']} (prefix {state['key_prefix']}) up; replica {state['replica']} " \
               f"is {role}{journal}"
    tenants = f"\n  tenant limits: {state['tenant_limits']}" if state.get("tenant_limits") else ""
    return (f"shared state: Redis {state['url']} DOWN ({state.get('problem')}); replica {state['replica']} serves "
            f"with the last state it knew{journal}\n  admin changes are refused (503) until it is back; "
            f"Alertmanager rollbacks still apply here and are journaled{tenants}")


def usage_errors_exit_2(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A subcommand whose :class:`UsageError` prints one line and exits 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except UsageError as exc:
            print(f"ollama-sidecar {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    return run


def _run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "status":
        code, doc = _call(args, "GET", "/admin/routes")
    elif command == "session-label":
        code, doc = _call(args, "POST", "/admin/session-label", {"session": args.session})
        if code == EXIT_OK and not args.json:
            print(doc["label"])
            return EXIT_OK
    elif command == "route":
        body: dict[str, Any] = {}
        if args.stable:
            body["stable"] = args.stable
        if args.canary is not None:
            body["canary"] = args.canary or None
        if args.weight is not None:
            body["canary_weight"] = args.weight
        if not body:
            print("ollama-sidecar route set: give at least one of --stable, --canary, --weight", file=sys.stderr)
            return EXIT_USAGE
        code, doc = _call(args, "PUT", f"/admin/routes/{quote(args.route, safe='')}", body)
    else:
        body = {"reason": args.reason} if command == "rollback" and args.reason else {}
        code, doc = _call(args, "POST", f"/admin/routes/{quote(args.route, safe='')}/{command}", body)
    if code != EXIT_OK:
        return code
    if args.json:
        import json
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif command == "status":
        print(format_status(doc))
    else:
        print(format_status({"routes": [doc]}))
        if command == "rollback" and not doc.get("changed", True):
            print(f"route {args.route} was already rolled back ({doc['reason']}); nothing changed")
    return EXIT_OK


run = usage_errors_exit_2(_run)
