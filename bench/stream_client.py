"""Streaming load: N concurrent /api/chat streams, each chunk's delivery delay measured.

Run in its own process. For every NDJSON line received, delay = CLOCK_MONOTONIC now
minus the ``x_sent_ns`` the fake upstream wrote into it. The same client reads direct
from the upstream and through each proxy, so its own cost is in every distribution and
cancels out in "added = through a proxy - direct". Prints one JSON object.

    python bench/stream_client.py --url http://127.0.0.1:18001 --streams 500 --chunks 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import aiohttp

MARK = b'"x_sent_ns":'
QS = (50, 90, 99, 99.9, 100)
RAMP_NS = 2_000_000_000


def quantiles(values: list[int], qs: tuple[float, ...]) -> dict[str, float]:
    ordered = sorted(values)
    n = len(ordered)
    return {f"p{q:g}": ordered[min(n - 1, int(q / 100 * n))] / 1000 for q in qs} if n else {}


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, chunks: int,
                     delays: list[tuple[int, int]], firsts: list[int]) -> str | None:
    """Reads one stream into (sent, delay) pairs; returns a problem description or None."""
    lines = 0
    done = False
    async with session.post(url + "/api/chat", data=body,
                            headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            return f"status {resp.status}"
        async for line in resp.content:
            now = time.monotonic_ns()
            at = line.rfind(MARK)
            if at < 0:
                return f"line without x_sent_ns: {line[:80]!r}"
            sent = int(line[at + len(MARK):].rstrip(b"}\r\n"))
            delays.append((sent, now - sent))
            if not lines:
                firsts.append(sent)
            lines += 1
            done = b'"done":true' in line
    if lines != chunks + 1 or not done:
        return f"got {lines} lines (want {chunks + 1}), final done={done}"
    return None


async def run(url: str, streams: int, chunks: int) -> dict[str, object]:
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "Tell me a story."}],
                       "stream": True, "options": {"num_predict": chunks}}).encode()
    delays: list[tuple[int, int]] = []
    firsts: list[int] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        results = await asyncio.gather(*(one_stream(session, url, body, chunks, delays, firsts)
                                         for _ in range(streams)), return_exceptions=True)
    wall = time.perf_counter() - started
    problems = [repr(r) if isinstance(r, BaseException) else r for r in results if r is not None]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"streams": streams, "chunks": len(delays), "wall_s": round(wall, 3),
            "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "failed_streams": len(problems), "first_problem": problems[0] if problems else None,
            "delay_us": quantiles([d for _, d in delays], QS),
            # After the ramp: chunks sent RAMP_S or more after the run's first chunk, once the
            # thundering herd of simultaneous connects has been served.
            "steady_delay_us": quantiles([d for sent, d in delays if sent >= min(firsts, default=0) + RAMP_NS], QS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=200)
    args = parser.parse_args()
    json.dump(asyncio.run(run(args.url, args.streams, args.chunks)), sys.stdout)


if __name__ == "__main__":
    main()
