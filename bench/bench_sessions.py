"""Memory of the session tracker at its cap, measured in-process with tracemalloc.

    .venv/bin/python bench/bench_sessions.py [--cap 100000]

Fills a :class:`proxy.quality.sessions.SessionTracker` with ``cap`` sessions, each with a
conversation hash (the most a record holds) and a feedback store with ``cap`` request ids,
and prints the bytes per session and in all, against the proxy's memory target (200 MB).
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.metrics import ProxyMetrics  # noqa: E402
from proxy.quality.feedback import FeedbackStore  # noqa: E402
from proxy.quality.sessions import SessionTracker, conversation_hash  # noqa: E402

TARGET_MB = 200


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=int, default=100_000)
    a = ap.parse_args()
    metrics = ProxyMetrics()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracker = SessionTracker(metrics, active_window=300, cap=a.cap)
    conv = conversation_hash([{"role": "user", "content": "hello"}])
    for i in range(a.cap):
        tracker.observe(f"user-{i}", "chat", "stable" if i % 2 else "canary", conv, False)
    sessions = tracemalloc.get_traced_memory()[0] - base
    store = FeedbackStore(metrics, ttl=3600, cap=a.cap)
    for i in range(a.cap):
        store.remember(f"{i:024x}", "chat", "stable", "qwen3:8b", b"12345678")
    total = tracemalloc.get_traced_memory()[0] - base
    print(f"session tracker at its cap of {a.cap:,}: {sessions / 2**20:.1f} MiB ({sessions / a.cap:.0f} B a session)")
    print(f"feedback store at its cap of {a.cap:,}: {(total - sessions) / 2**20:.1f} MiB "
          f"({(total - sessions) / a.cap:.0f} B a request id)")
    print(f"both: {total / 2**20:.1f} MiB of the proxy's {TARGET_MB} MB target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
