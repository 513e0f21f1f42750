"""The balancer's cost per request, timed in-process (the HTTP bench's noise is larger).

    .venv/bin/python bench/bench_balancer.py

Times :meth:`proxy.fleet.fleet.Fleet.choose` plus the in-flight bookkeeping a request does
(acquire, release, outcome) for fleets of 1, 3 and 8 servers with the model loaded on all,
some or none of them, with and without a session; prints the median and p99 per request
in microseconds against the target (20 µs).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.config import parse_config  # noqa: E402
from proxy.fleet.fleet import OK, Fleet  # noqa: E402
from proxy.fleet.servers import Loaded  # noqa: E402
from proxy.metrics import ProxyMetrics  # noqa: E402

MODEL = "qwen3:8b"
TARGET_US = 20.0


def fleet_of(n: int, loaded_on: int) -> Fleet:
    config = parse_config({"upstreams": {f"gpu{i}": {"url": f"http://gpu{i}:11434", "parallel": 4}
                                         for i in range(n)}}, environ={})
    fleet = Fleet(config, ProxyMetrics())
    for i, server in enumerate(fleet.servers.values()):
        server.installed = frozenset({MODEL, "llama3.2:latest"})
        if i < loaded_on:
            server.loaded = {MODEL: Loaded(1)}
    return fleet


def per_request_us(fleet: Fleet, sessions: bool, rounds: int = 20, per_round: int = 2000) -> list[float]:
    out = []
    for r in range(rounds):
        t0 = time.perf_counter()
        for i in range(per_round):
            choice = fleet.choose(MODEL, f"user-{i}" if sessions else None, embedding=False)
            server = choice.servers[0]
            fleet.acquire(server, MODEL)
            fleet.release(server, MODEL)
            fleet.outcome(server, OK)
        out.append((time.perf_counter() - t0) / per_round * 1e6)
    return out


def main() -> int:
    print(f"{'servers':>7} {'loaded on':>9} {'session':>7} {'median µs':>10} {'p99 µs':>8}  target {TARGET_US:g} µs")
    worst = 0.0
    for n, loaded in ((1, 1), (3, 0), (3, 2), (3, 3), (8, 8)):
        for sessions in (False, True):
            times = per_request_us(fleet_of(n, loaded), sessions)
            med, p99 = statistics.median(times), sorted(times)[int(len(times) * 0.99) - 1]
            worst = max(worst, med)
            print(f"{n:>7} {loaded:>9} {'yes' if sessions else 'no':>7} {med:>10.2f} {p99:>8.2f}")
    print(f"worst median: {worst:.2f} µs -> {'met' if worst <= TARGET_US else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
