"""Closed-loop HTTP load of small non-stream POST /api/chat requests on keep-alive connections.

``wrk`` (Debian's package) is used when installed: it is C and costs the 2-core machine
far less CPU per request than any Python client, which matters because the load
generator shares the cores with the upstream and the proxy. Without wrk, this module
runs itself as a minimal raw-socket HTTP/1.1 client in a separate process (one read
loop per connection, Content-Length framing only). One run uses one generator for
every target, so the columns stay comparable; the report names which one was used.

    python bench/loadgen.py --url http://127.0.0.1:18001 --connections 32 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

BODY = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "Why is the sky blue?"}],
                   "stream": False}, separators=(",", ":"))

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"p50_us\\":%%d,\\"p99_us\\":%%d," ..
    "\\"errors\\":%%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
""" % BODY


def generator() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def run_load(url: str, connections: int, seconds: float) -> dict[str, float]:
    """requests, rps, p50_us, p99_us, errors of a closed-loop run against ``url``."""
    if generator() == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT)
        try:
            out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                                  "-s", script.name, url + "/api/chat"],
                                 capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(script.name)
        line = next(line for line in out.splitlines() if line.startswith("BENCH_JSON "))
        result = json.loads(line[len("BENCH_JSON "):])
    else:
        out = subprocess.run([sys.executable, __file__, "--url", url, "--connections", str(connections),
                              "--seconds", str(seconds)], capture_output=True, text=True, check=True).stdout
        result = json.loads(out)
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


# --- the fallback generator ----------------------------------------------------------------

async def _connection(host: str, port: int, request: bytes, stop: float,
                      latencies: list[int], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter_ns
    try:
        while time.monotonic() < stop:
            t0 = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status_ok = head.startswith(b"HTTP/1.1 200")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(clock() - t0)
            if not status_ok:
                errors.append(1)
    finally:
        writer.close()


async def _generate(url: str, connections: int, seconds: float) -> dict[str, int]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (f"POST /api/chat HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n{BODY}").encode()
    latencies: list[int] = []
    errors: list[int] = []
    started = time.perf_counter_ns()
    stop = time.monotonic() + seconds
    await asyncio.gather(*(_connection(host, port, request, stop, latencies, errors)
                           for _ in range(connections)))
    elapsed = time.perf_counter_ns() - started
    latencies.sort()
    n = len(latencies)
    return {"requests": n, "duration_us": elapsed // 1000, "errors": len(errors),
            "p50_us": latencies[n // 2] // 1000 if n else 0,
            "p99_us": latencies[min(n - 1, int(n * 0.99))] // 1000 if n else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    json.dump(asyncio.run(_generate(args.url, args.connections, args.seconds)), sys.stdout)


if __name__ == "__main__":
    main()
