"""``ollama-sidecar proxy``: start the proxy with flags, env and an optional YAML file."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import signal
import sys

from aiohttp import web

from proxy.app import DRAIN, FORWARDER, build_app
from proxy.common.listen import parse_listen
from proxy.config import ConfigError, ProxyConfig, load_config

log = logging.getLogger("ollama_sidecar.proxy")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--listen", help="HOST:PORT to listen on (env OLLAMA_SIDECAR_LISTEN; "
                        "default 127.0.0.1:11435)")
    parser.add_argument("--upstream", help="Ollama URL (beats env OLLAMA_SIDECAR_UPSTREAM and the file's upstream:, "
                        "which beat OLLAMA_HOST as Ollama reads it; default http://127.0.0.1:11434)")
    parser.add_argument("--config", help="YAML config file (routes, timeouts, limits…)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop: uvloop when installed (auto, the default) or asyncio's own")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop halves the relay's per-chunk CPU and its tail latency under hundreds of
    streams (docs/performance.md); asyncio's loop stays available as a fallback."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("ollama-sidecar proxy: --loop uvloop given but uvloop is not installed")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def tune_gc() -> None:
    """A streaming proxy allocates a few objects per chunk and keeps almost none. With the
    default thresholds, full collections over everything imported at start-up stalled
    every stream at once for 30-100 ms under 500 concurrent streams. Freezing the start-up
    heap and collecting the young generations less often removes those stalls; cycles are
    still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        overrides = {"listen": args.listen, "upstream": args.upstream}
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"ollama-sidecar proxy: config error: {exc}", file=sys.stderr)
        return 2
    host, port = parse_listen(config.listen)
    warn_if_open(host, config)
    app = build_app(config, overrides=overrides)
    loop = new_event_loop(args.loop)
    tune_gc()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(serve(app, host, port, config.timeouts.shutdown))
    finally:
        _cancel_remaining(loop)
        loop.close()


def warn_if_open(host: str, config: ProxyConfig) -> None:
    """Serving the network without keys is allowed (a trusted LAN), but never silently."""
    if config.tenants or _is_loopback_host(host):
        return
    log.warning("listening on %s with no auth.api_keys: anyone who can reach this address can use "
                "the models and read /metrics; set auth.api_keys (or auth.api_keys_file) to require a key",
                host or "all interfaces")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(app: web.Application, host: str, port: int, grace: float) -> int:
    """Serve until SIGTERM or SIGINT, then drain.

    A restart used to cut every stream in flight after 5 s. Now the first signal makes
    ``/readyz`` answer 503 and closes the listener (new connections are refused, so a
    load balancer moves on), lets requests in flight finish for up to ``grace`` seconds
    (``timeouts.shutdown``), and exits. A second signal exits at once."""
    # handler_cancellation: a client that disconnects cancels its handler, which closes the
    # upstream request at once instead of letting Ollama generate for nobody.
    runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True, access_log=None,
                           shutdown_timeout=grace)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    config = app[FORWARDER].config
    metrics_at = f"http://{host}:{port}/metrics"
    if config.metrics_listen:
        metrics_host, metrics_port = parse_listen(config.metrics_listen)
        await web.TCPSite(runner, metrics_host, metrics_port).start()
        metrics_at = f"http://{metrics_host}:{metrics_port}/metrics only"
    log.info("proxy listening on http://%s:%d, forwarding to %s (metrics at %s%s)", host, port,
             config.upstream, metrics_at, ", token required" if config.metrics_token else "")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    app[DRAIN].begin()
    log.warning("stopping: no new connections; requests in flight on %d open connection(s) may finish "
                "within %gs (timeouts.shutdown); signal again to exit at once", _open(runner), grace)
    cleanup = asyncio.ensure_future(runner.cleanup())
    again = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, again.set)
    second = asyncio.ensure_future(again.wait())
    await asyncio.wait({cleanup, second}, return_when=asyncio.FIRST_COMPLETED)
    if not cleanup.done():
        log.warning("second signal: exiting now, cutting what is left on %d connection(s)", _open(runner))
        cleanup.cancel()
        return 1
    second.cancel()
    cleanup.result()
    log.info("stopped")
    return 0


def _open(runner: web.AppRunner) -> int:
    return len(runner.server.connections) if runner.server is not None else 0


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is still running (handlers cut by a second signal) and let it unwind."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=2))
