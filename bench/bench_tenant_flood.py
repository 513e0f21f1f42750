"""A runaway tenant against the others: the support bot's latency while a batch job floods.

    .venv/bin/python bench/bench_tenant_flood.py [--seconds 8] [--flood 24]

One simulated Ollama (``ollama-sidecar simulate``, 4 parallel slots, Ollama's FIFO queue
beyond them) behind one proxy with two tenants. ``support-bot`` sends one request at a
time; ``batch`` sends ``--flood`` at once, over and over. Three phases, each measured in
the same run: support-bot alone (the reference), then with the flood when batch has
``concurrent: 2``, then with the flood when batch has no limit. Printed: support-bot's
latency p50/p95 per phase as a ratio to the reference, and batch's requests served and
refused. Tests check the mechanism (a refused request never reaches Ollama, a flood leaves
the other tenant served: tests/test_tenants.py); this measures what it is worth.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import requests
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.targets import _spawn, wait_http  # noqa: E402
from proxy.commands.children import free_port  # noqa: E402

MODEL = "qwen3:8b"
KEYS = {"support-bot": "sk-bench-support", "batch": "sk-bench-batch"}


def start(stack: ExitStack, tmp: Path, batch_limits: dict[str, int]) -> str:
    sim_port, proxy_port = free_port(), free_port()
    cli = str(Path(sys.executable).parent / "ollama-sidecar")
    sim = _spawn(stack, [cli, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--parallel", "4", "--seed", "1"],
                 tmp / "simulate.log")
    wait_http(f"http://127.0.0.1:{sim_port}/api/version", "simulator", sim)
    config = tmp / "proxy.yaml"
    config.write_text(yaml.safe_dump({"access_log": False, "auth": {"tenants": {
        "support-bot": {"keys": [KEYS["support-bot"]]},
        "batch": {"keys": [KEYS["batch"]], "limits": batch_limits}}}}))
    proxy = _spawn(stack, [cli, "proxy", "--listen", f"127.0.0.1:{proxy_port}", "--upstream",
                           f"http://127.0.0.1:{sim_port}", "--config", str(config), "--log-level", "WARNING"],
                   tmp / "proxy.log")
    url = f"http://127.0.0.1:{proxy_port}"
    wait_http(f"{url}/healthz", "proxy", proxy)
    ask(requests.Session(), url, "support-bot")  # the model loaded before anything is measured
    return url


def ask(http: requests.Session, url: str, tenant: str) -> int:
    r = http.post(f"{url}/api/chat", headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=120,
                  json={"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}]})
    return r.status_code


def phase(url: str, seconds: float, flood: int) -> tuple[list[float], dict[int, int]]:
    stop = threading.Event()
    batch: dict[int, int] = {}
    lock = threading.Lock()

    def flooder() -> None:
        http = requests.Session()
        while not stop.is_set():
            status = ask(http, url, "batch")
            with lock:
                batch[status] = batch.get(status, 0) + 1
            if status == 429:
                stop.wait(0.05)  # a client honouring nothing but a short pause: a runaway job

    threads = [threading.Thread(target=flooder, daemon=True) for _ in range(flood)]
    for t in threads:
        t.start()
    time.sleep(1.0 if flood else 0.0)  # the flood is on before the support bot is timed
    http = requests.Session()
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        assert ask(http, url, "support-bot") == 200
        latencies.append(time.perf_counter() - t0)
    stop.set()
    for t in threads:
        t.join(130)
    return latencies, batch


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="support-bot's measured time per phase")
    parser.add_argument("--flood", type=int, default=24, help="batch's concurrent clients")
    args = parser.parse_args()
    rows = []
    for name, limits, flood in (("support-bot alone", {"concurrent": 2}, 0),
                                ("flood, batch limited to concurrent: 2", {"concurrent": 2}, args.flood),
                                ("flood, batch without limits", {}, args.flood)):
        with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
            url = start(stack, Path(tmp), limits)
            latencies, batch = phase(url, args.seconds, flood)
        rows.append((name, latencies, batch))
    base50, base95 = pct(rows[0][1], 0.5), pct(rows[0][1], 0.95)
    print(f"simulated Ollama: 4 parallel slots; batch: {args.flood} clients; support-bot: 1 client, "
          f"{args.seconds:g} s per phase")
    print(f"{'phase':<40} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'p50 ×':>6} {'p95 ×':>6}  batch served/refused")
    for name, lat, batch in rows:
        p50, p95 = pct(lat, 0.5), pct(lat, 0.95)
        print(f"{name:<40} {len(lat):>4} {p50 * 1000:8.1f} {p95 * 1000:8.1f} {p50 / base50:6.2f} {p95 / base95:6.2f}"
              f"  {batch.get(200, 0)}/{batch.get(429, 0)}")
    print(f"support-bot median over all phases: {statistics.median(x for _, lat, _ in rows for x in lat) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
