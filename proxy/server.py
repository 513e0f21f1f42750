"""``ollama-sidecar proxy``: start the proxy with flags, env and an optional YAML file."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from aiohttp import web

from proxy.app import build_app
from proxy.config import ConfigError, load_config
from proxy.listen import parse_listen

log = logging.getLogger("ollama_sidecar.proxy")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--listen", help="HOST:PORT to listen on (env OLLAMA_SIDECAR_LISTEN; "
                        "default 127.0.0.1:11435)")
    parser.add_argument("--upstream", help="Ollama URL (default: OLLAMA_HOST as Ollama reads it, "
                        "else http://127.0.0.1:11434)")
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
    app = build_app(config, overrides=overrides)
    log.info("proxy listening on http://%s:%d, forwarding to %s (metrics at /metrics)",
             host, port, config.upstream)
    # handler_cancellation: a client that disconnects cancels its handler, which closes the
    # upstream request at once instead of letting Ollama generate for nobody.
    loop = new_event_loop(args.loop)
    tune_gc()
    web.run_app(app, host=host, port=port, handler_cancellation=True, access_log=None,
                print=None, shutdown_timeout=5, loop=loop)
    return 0
