"""What tenants and replicas add to a request, timed in-process (the HTTP bench's noise is
larger than these parts), as ratios against the recorder's own work measured in the same run.

    .venv/bin/python bench/bench_request_path_parts.py

Per request, each part as the forwarder calls it:

* reference: :meth:`Recorder.record` of a finished chat request (the labelled samples every
  request already costs);
* tenants: ``identify`` (SHA-256 of the key, one dict lookup) + ``admit`` + ``finish`` with
  all four limits set, and the attribution counters;
* replicas, the request path's share: ``Outcomes.add`` (what replaces the breaker's and the
  probe's per-request work when ``state:`` is Redis), against ``Breakers.observe`` +
  ``Probes.observe`` (what a single proxy does).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.config import parse_config  # noqa: E402
from proxy.control.breaker import Breakers  # noqa: E402
from proxy.control.probe import Probes  # noqa: E402
from proxy.control.routing import Decision, RouteTable  # noqa: E402
from proxy.dataplane.instrument import Recorder, RequestRecord  # noqa: E402
from proxy.dataplane.observe import ReplyStats  # noqa: E402
from proxy.metrics import Arm, ErrorType, ProxyMetrics  # noqa: E402
from proxy.replicas.counts import Outcomes  # noqa: E402
from proxy.tenants.tenants import Tenants  # noqa: E402

LIMITS = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12, "tokens_per_day": 10**15, "concurrent": 10**6}
CONFIG = {"auth": {"tenants": {"support-bot": {"keys": ["sk-support"], "limits": LIMITS},
                               "analytics": {"keys": ["sk-analytics"], "limits": LIMITS}}},
          "routes": {"chat": {"stable": "llama3:8b", "canary": "qwen2:7b", "canary_weight": 10,
                              "breaker": {"enabled": True}}}}


def finished(stats: bool = True) -> RequestRecord:
    rec = RequestRecord("/api/chat", route="chat", arm=Arm.STABLE, model="llama3:8b", status=200, duration=0.5,
                        start=0.0, stats=ReplyStats(prompt_tokens=120, completion_tokens=40, load_duration=0.01,
                                                    prompt_eval_duration=0.05, eval_duration=0.4,
                                                    first_content_at=0.1, finished=True) if stats else None)
    return rec


def per_request_us(work: Callable[[int], None], rounds: int = 15, per_round: int = 4000) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(per_round):
            work(i)
        times.append((time.perf_counter() - t0) / per_round * 1e6)
    return statistics.median(times)


def main() -> int:
    config = parse_config(CONFIG, environ={})
    metrics = ProxyMetrics()
    recorder = Recorder(metrics, config, session_key=b"k" * 32)
    rec = finished()
    reference = per_request_us(lambda i: recorder.record(rec))

    tenants = Tenants(config, metrics)
    headers = ("Bearer sk-support", "Bearer sk-analytics")

    def tenant_work(i: int) -> None:
        tenant = tenants.identify(headers[i & 1])
        assert tenant is not None and tenants.admit(tenant) is None
        tenants.finish(tenant, rec, True)
    tenant_us = per_request_us(tenant_work)

    routes = RouteTable(config)
    breakers = Breakers(routes, metrics, trip=lambda route: None)
    probes = Probes(routes, lambda: config.decisions, finish=lambda *a: None)
    decisions = (Decision("chat", Arm.STABLE, "llama3:8b", ""), Decision("chat", Arm.CANARY, "qwen2:7b", ""))

    def single(i: int) -> None:
        d = decisions[i % 10 == 0]
        breakers.observe(d, ErrorType.NONE)
        probes.observe(d, ErrorType.NONE)
    single_us = per_request_us(single)
    outcomes = Outcomes()

    def replicated(i: int) -> None:
        d = decisions[i % 10 == 0]
        outcomes.add(d.route, d.arm == Arm.CANARY, False)
        if i % 5000 == 0:
            outcomes.take()  # the sync's share, off the request path in the proxy
    replicated_us = per_request_us(replicated)

    print(f"{'part':<58} {'µs/request':>10} {'× recorder':>10}")
    for name, us in (("reference: Recorder.record (labelled samples)", reference),
                     ("tenants: identify + admit + finish, four limits", tenant_us),
                     ("single proxy: Breakers.observe + Probes.observe", single_us),
                     ("replicas (state: Redis): Outcomes.add", replicated_us)):
        print(f"{name:<58} {us:10.2f} {us / reference:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
