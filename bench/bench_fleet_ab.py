"""Proxy CPU per request with one Ollama server and with three, interleaved A/B.

    .venv/bin/python bench/bench_fleet_ab.py

Two proxies in front of the same fake upstream: A with plain ``upstream:`` (a fleet of
one), B with ``upstreams:`` naming it three times (three servers to choose from, their
discovery and health checks running). Each round loads A then B (or B then A) for a few
seconds at 32 connections and reads each proxy's CPU time from /proc; the figure is CPU
microseconds per request, median over rounds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import loadgen  # noqa: E402
import targets  # noqa: E402

from proxy.commands.children import free_port  # noqa: E402

ROUNDS, SECONDS, CONNECTIONS = 6, 4, 32


def start(stack: ExitStack, tmp: Path, name: str, config: str) -> tuple[str, subprocess.Popen]:
    port = free_port()
    path = tmp / f"{name}.yml"
    path.write_text(config)
    argv = [str(Path(sys.executable).parent / "ollama-sidecar"), "proxy", "--listen", f"127.0.0.1:{port}",
            "--config", str(path), "--log-level", "WARNING"]
    proc = targets._spawn(stack, argv, tmp / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    targets.wait_http(url + "/healthz", name, proc)
    return url, proc


def main() -> int:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fleet-")))
        upstream, _ = targets.start_upstream(stack, tmp, 100.0)
        one = start(stack, tmp, "one", f"access_log: false\nupstream: {upstream}\n")
        three = start(stack, tmp, "three", "access_log: false\ndiscovery_interval: 10\nhealth_interval: 5\n"
                      "upstreams:\n" + "".join(f"  gpu{i}: {{url: {upstream}, parallel: 4}}\n" for i in range(3)))
        per_request: dict[str, list[float]] = {"one": [], "three": []}
        rps: dict[str, list[float]] = {"one": [], "three": []}
        for url, _ in (one, three):
            loadgen.run_load(url, CONNECTIONS, 1)  # warm-up
        for r in range(ROUNDS):
            order = [("one", one), ("three", three)][:: 1 if r % 2 == 0 else -1]
            for name, (url, proc) in order:
                before = targets.cpu_seconds(proc.pid)
                result = loadgen.run_load(url, CONNECTIONS, SECONDS)
                used = targets.cpu_seconds(proc.pid) - before
                per_request[name].append(used / max(1, result["requests"]) * 1e6)
                rps[name].append(result["rps"])
        for name in ("one", "three"):
            print(f"{name:>5} server(s): {statistics.median(per_request[name]):7.1f} µs CPU per request "
                  f"(rounds {', '.join(f'{x:.0f}' for x in per_request[name])}), "
                  f"{statistics.median(rps[name]):.0f} req/s")
        a, b = statistics.median(per_request["one"]), statistics.median(per_request["three"])
        print(f"three servers cost {b - a:+.1f} µs CPU per request ({(b / a - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
