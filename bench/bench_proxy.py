"""Proxy overhead benchmark: direct vs ollama-sidecar proxy vs nginx, in one run.

Every figure is compared with references measured in the same run on the same machine
(a fake upstream reached directly, and nginx as a reverse proxy), because absolute
numbers on a shared 2-core machine mean little. Each component runs in its own process:
fake upstream, proxy (``ollama-sidecar proxy``, access log off), nginx (when installed),
load generator (wrk when installed) and streaming client.

    .venv/bin/python bench/bench_proxy.py            # full run, about 2 minutes
    .venv/bin/python bench/bench_proxy.py --quick    # smoke run, a few seconds

Not a test: it prints ratios and marks the issue's targets met or missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp

import loadgen
import targets

HERE = Path(__file__).resolve().parent

# The targets.
TARGET_ADDED_P50_MS = 0.3
TARGET_THROUGHPUT_VS_NGINX = 0.5
TARGET_STREAM_ADDED_P99_MS = 2.0
TARGET_RSS_MB = 200.0
# Direct delivery slower than this at p50 means the load generator side is overloaded.
SATURATED_DIRECT_P50_MS = 2.0


@dataclass
class Plan:
    rounds: int
    latency_s: float
    throughput_s: float
    connections: int
    streams: int
    chunks: int
    interval_ms: float


# Streams at 100 ms (10 tokens/s each, 5 000 chunks/s in all): at 10 ms this 2-core machine
# cannot carry 500 streams even without a proxy (direct waits ~20 ms at p50), so the
# "added" delay would measure overload; --interval-ms 10 shows it, with a warning.
FULL = Plan(rounds=2, latency_s=4, throughput_s=5, connections=32, streams=500, chunks=200, interval_ms=100)
QUICK = Plan(rounds=1, latency_s=1, throughput_s=1, connections=32, streams=50, chunks=20, interval_ms=10)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stream_run(url: str, plan: Plan) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "stream_client.py"), "--url", url,
                          "--streams", str(plan.streams), "--chunks", str(plan.chunks)],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    if result["failed_streams"]:
        raise RuntimeError(f"{url}: {result['failed_streams']} streams failed, e.g. {result['first_problem']}")
    return result


def check_loads(name: str, result: dict) -> dict:
    if result["errors"] or not result["requests"]:
        raise RuntimeError(f"{name}: {result['errors']} errors in {result['requests']} requests")
    return result


def measure(plan: Plan, args: argparse.Namespace) -> dict:
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-proxy-")))
        upstream, upstream_proc = targets.start_upstream(stack, tmp, plan.interval_ms)
        urls = {"direct": upstream}
        proxy_url, proxy = targets.start_proxy(stack, tmp, upstream, args.proxy_loop)
        urls["proxy"] = proxy_url
        nginx = None
        if args.nginx and targets.nginx_available():
            urls["nginx"], nginx = targets.start_nginx(stack, tmp, upstream, args.nginx_workers)
        names = list(urls)

        log(f"warm-up ({', '.join(names)})")
        for url in urls.values():
            check_loads(url, loadgen.run_load(url, plan.connections, 1))

        latency: dict[str, list[dict]] = {n: [] for n in names}
        throughput: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(plan.rounds if "http" in args.phases else 0):  # interleaved rounds: drift on the machine hits all targets alike
            for name in names:
                log(f"round {r + 1}/{plan.rounds}: {name}: 1 client, {plan.latency_s:g}s")
                latency[name].append(check_loads(name, loadgen.run_load(urls[name], 1, plan.latency_s)))
                log(f"round {r + 1}/{plan.rounds}: {name}: {plan.connections} connections, {plan.throughput_s:g}s")
                throughput[name].append(check_loads(
                    name, loadgen.run_load(urls[name], plan.connections, plan.throughput_s)))

        streaming: dict[str, dict] = {}
        for name in names if "stream" in args.phases else ():
            log(f"{name}: {plan.streams} streams x {plan.chunks} chunks every {plan.interval_ms:g} ms")
            pids = {"direct": [], "proxy": [proxy.pid], "nginx": targets.children(nginx.pid) if nginx else []}[name]
            before = [targets.cpu_seconds(p) for p in [upstream_proc.pid, *pids]]
            streaming[name] = stream_run(urls[name], plan)
            after = [targets.cpu_seconds(p) for p in [upstream_proc.pid, *pids]]
            used = [b - a for a, b in zip(before, after)]
            streaming[name]["cpu_s"] = {"upstream": used[0], "relay": sum(used[1:]),
                                        "client": streaming[name]["client_cpu_s"]}

        rss = {"proxy": targets.peak_rss_mb(proxy.pid)}
        if nginx is not None:
            rss["nginx"] = max([targets.peak_rss_mb(p) for p in targets.children(nginx.pid)] or [float("nan")])

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    res: dict = {"names": names, "loadavg": loadavg, "rss_mb": rss}
    if latency["direct"]:
        res["p50_ms"] = {n: med(latency[n], "p50_us") / 1000 for n in names}
        res["p99_ms"] = {n: med(latency[n], "p99_us") / 1000 for n in names}
        res["rps"] = {n: med(throughput[n], "rps") for n in names}
    if streaming:
        for q, key in (("p50", "stream_p50_ms"), ("p99", "stream_p99_ms"), ("p100", "stream_max_ms")):
            res[key] = {n: streaming[n]["delay_us"][q] / 1000 for n in names}
            res["steady_" + key] = {n: streaming[n]["steady_delay_us"].get(q, float("nan")) / 1000 for n in names}
        res["stream_wall_s"] = {n: streaming[n]["wall_s"] for n in names}
        for who in ("relay", "upstream", "client"):
            res[f"stream_cpu_{who}_s"] = {n: streaming[n]["cpu_s"][who] for n in names}
    return res


def verdict(ok: bool, miss: str) -> str:
    return "met" if ok else f"MISSED ({miss})"


def report(res: dict, plan: Plan, args: argparse.Namespace) -> str:
    names = res["names"]
    has_nginx = "nginx" in names
    gen = loadgen.generator()
    lines = [
        f"machine: {platform.machine()}, {_cores()} cores; Python {platform.python_version()}; "
        f"aiohttp {aiohttp.__version__}; proxy event loop: {args.proxy_loop}; proxy access log: off "
        f"(config file access_log: false); load average at start: {res['loadavg']}",
        f"load generator: {gen} (1 thread, keep-alive), {plan.rounds} interleaved round(s), median shown; "
        f"streaming: {plan.streams} streams x {plan.chunks} chunks, one every {plan.interval_ms:g} ms",
        "nginx: " + (f"{args.nginx_workers} worker(s), proxy_buffering off, upstream keepalive 64"
                     if has_nginx else "not installed or disabled: nginx column and throughput target skipped"),
        "",
    ]
    head = f"{'':34}" + "".join(f"{n:>10}" for n in names) + f"{'proxy-direct':>14}"
    if has_nginx:
        head += f"{'nginx-direct':>14}"
    lines.append(head)

    def row(label: str, key: str, fmt: str, added: bool = True) -> None:
        vals = res[key]
        text = f"{label:34}" + "".join(f"{vals[n]:>10{fmt}}" for n in names)
        if added:
            text += f"{vals['proxy'] - vals['direct']:>+14{fmt}}"
            if has_nginx:
                text += f"{vals['nginx'] - vals['direct']:>+14{fmt}}"
        lines.append(text)

    if "rps" in res:
        row("1 client p50 latency (ms)", "p50_ms", ".3f")
        row("1 client p99 latency (ms)", "p99_ms", ".3f")
        rps = res["rps"]
        lines.append(f"{f'{plan.connections} conns throughput (req/s)':34}"
                     + "".join(f"{rps[n]:>10.0f}" for n in names))
    if "stream_p99_ms" in res:
        row("stream chunk delay p50 (ms)", "stream_p50_ms", ".3f")
        row("stream chunk delay p99 (ms)", "stream_p99_ms", ".3f")
        row("stream chunk delay max (ms)", "stream_max_ms", ".1f")
        steady = res["steady_stream_p99_ms"]["direct"] == res["steady_stream_p99_ms"]["direct"]  # not NaN
        if steady:  # a run shorter than the ramp has no steady part
            row("  after the 2 s ramp: p50 (ms)", "steady_stream_p50_ms", ".3f")
            row("  after the 2 s ramp: p99 (ms)", "steady_stream_p99_ms", ".3f")
            row("  after the 2 s ramp: max (ms)", "steady_stream_max_ms", ".1f")
        row("stream run wall time (s)", "stream_wall_s", ".2f")
        row("stream CPU s: proxy/nginx itself", "stream_cpu_relay_s", ".2f")
        row("stream CPU s: fake upstream", "stream_cpu_upstream_s", ".2f")
        row("stream CPU s: streaming client", "stream_cpu_client_s", ".2f")
    lines.append(f"{'peak RSS (MB, VmHWM)':34}" + "".join(
        f"{res['rss_mb'][n]:>10.1f}" if n in res["rss_mb"] else f"{'-':>10}" for n in names))
    if "rps" in res:
        ratios = [f"proxy/direct {rps['proxy'] / rps['direct']:.0%}"]
        if has_nginx:
            ratios += [f"nginx/direct {rps['nginx'] / rps['direct']:.0%}",
                       f"proxy/nginx {rps['proxy'] / rps['nginx']:.0%}"]
        lines.append(f"{'throughput ratios':34}" + ", ".join(ratios))

    lines += ["", "targets (issue 2):"]
    if "rps" in res:
        added_p50 = res["p50_ms"]["proxy"] - res["p50_ms"]["direct"]
        lines.append(f"  added p50 at 1 client <= {TARGET_ADDED_P50_MS} ms: {added_p50:.3f} ms -> "
                     + verdict(added_p50 <= TARGET_ADDED_P50_MS, f"by {added_p50 - TARGET_ADDED_P50_MS:.3f} ms, "
                               f"{added_p50 / TARGET_ADDED_P50_MS:.1f}x the target"))
        if has_nginx:
            ratio = rps["proxy"] / rps["nginx"]
            lines.append(f"  throughput at {plan.connections} conns >= {TARGET_THROUGHPUT_VS_NGINX:.0%} of nginx: "
                         f"{ratio:.0%} -> " + verdict(ratio >= TARGET_THROUGHPUT_VS_NGINX,
                                                      f"by {(TARGET_THROUGHPUT_VS_NGINX - ratio) * 100:.0f} points"))
        else:
            lines.append(f"  throughput at {plan.connections} conns >= 50% of nginx: skipped (no nginx)")
    if "stream_p99_ms" in res:
        stream_added = res["stream_p99_ms"]["proxy"] - res["stream_p99_ms"]["direct"]
        lines.append(f"  streaming added per-chunk p99 <= {TARGET_STREAM_ADDED_P99_MS} ms: {stream_added:.3f} ms -> "
                     + verdict(stream_added <= TARGET_STREAM_ADDED_P99_MS,
                               f"by {stream_added - TARGET_STREAM_ADDED_P99_MS:.3f} ms"))
        steady_added = res["steady_stream_p99_ms"]["proxy"] - res["steady_stream_p99_ms"]["direct"]
        if steady_added == steady_added:
            lines.append(f"    after the 2 s ramp (all streams connected): added p99 {steady_added:.3f} ms -> "
                         + verdict(steady_added <= TARGET_STREAM_ADDED_P99_MS,
                                   f"by {steady_added - TARGET_STREAM_ADDED_P99_MS:.3f} ms"))
        if res["stream_p50_ms"]["direct"] > SATURATED_DIRECT_P50_MS:
            lines.append(f"    warning: direct streaming already waits {res['stream_p50_ms']['direct']:.1f} ms at p50: "
                         "the machine cannot carry this stream load even without a proxy, so the added delay "
                         "measures overload (try a larger --interval-ms)")
    rss = res["rss_mb"]["proxy"]
    lines.append(f"  proxy peak RSS <= {TARGET_RSS_MB:.0f} MB: {rss:.1f} MB -> "
                 + verdict(rss <= TARGET_RSS_MB, f"by {rss - TARGET_RSS_MB:.1f} MB"))
    if args.quick:
        lines += ["", "(--quick: smoke run with small loads; figures are not the recorded ones)"]
    return "\n".join(lines)


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a few seconds, small loads")
    parser.add_argument("--proxy-loop", choices=("asyncio", "uvloop"), default="uvloop",
                        help="the proxy's event loop (its --loop; default uvloop, what it runs on when installed)")
    parser.add_argument("--no-nginx", dest="nginx", action="store_false", help="leave nginx out")
    parser.add_argument("--nginx-workers", type=int, default=1,
                        help="nginx worker processes (default 1, like the single-process proxy)")
    parser.add_argument("--streams", type=int, help="concurrent streams (default 500; 50 with --quick)")
    parser.add_argument("--chunks", type=int, help="chunks per stream (default 200)")
    parser.add_argument("--interval-ms", type=float,
                        help="upstream pace between chunks (default 100 ms; 10 ms with --quick)")
    parser.add_argument("--phases", default="http,stream", type=lambda s: set(s.split(",")),
                        help="comma-separated subset of http (latency, throughput), stream")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args()
    # Let SIGTERM unwind the ExitStack so every server this run started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = QUICK if args.quick else FULL
    for field in ("streams", "chunks", "interval_ms"):
        if getattr(args, field) is not None:
            plan = Plan(**{**plan.__dict__, field: getattr(args, field)})
    try:
        res = measure(plan, args)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None)
        print(f"bench_proxy: {exc}" + (f"\n{detail}" if detail else ""), file=sys.stderr)
        return 1
    print(report(res, plan, args))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
