"""``ollama-sidecar exporter``: serve /metrics for Ollama's model state and the GPUs.

A threaded WSGI server (standard library) is enough: each scrape runs on its own thread,
so NVML's blocking C calls never stall another scrape, and there is no event loop to
keep free.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from socketserver import ThreadingMixIn
from types import FrameType
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from exporter.app import Exporter
from proxy import __version__
from proxy.common.listen import parse_listen
from proxy.common.ollama_host import resolve_ollama_url

log = logging.getLogger("exporter")

DEFAULT_LISTEN = "127.0.0.1:9101"
LISTEN_ENV = "OLLAMA_EXPORTER_LISTEN"


def _listen(value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--listen", type=_listen, default=os.environ.get(LISTEN_ENV, DEFAULT_LISTEN), metavar="HOST:PORT",
        help=f"HOST:PORT to serve /metrics on (env {LISTEN_ENV}; default {DEFAULT_LISTEN}; port 0 picks one)")
    parser.add_argument(
        "--ollama", metavar="URL", default=None,
        help="Ollama's URL (default: OLLAMA_HOST read the way Ollama reads it, else http://127.0.0.1:11434)")
    parser.add_argument(
        "--timeout", type=_positive, default=3.0, metavar="SECONDS",
        help="the most a scrape waits for Ollama's three API calls together, and for NVML (default 3)")
    parser.add_argument(
        "--cache", type=_non_negative, default=1.0, metavar="SECONDS",
        help="reuse a fetch for scrapes within this many seconds; 0 fetches every scrape (default 1)")
    parser.add_argument(
        "--no-nvml", dest="nvml", action="store_false",
        help="do not read GPUs at all (no nvml_up or gpu_* series), e.g. on a CPU-only host")
    parser.add_argument(
        "--fake-gpus", type=int, default=0, metavar="N",
        help="for demos and tests: read N simulated GPUs (a fake NVML) instead of the real ones")
    parser.add_argument(
        "--nvml-retry", type=_positive, default=30.0, metavar="SECONDS",
        help="while NVML is unavailable, try to initialise it again this often (default 30)")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"))


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    # wsgiref writes the headers and the body separately; with Nagle on, the body waits
    # for the client's delayed ACK of the headers (about 40 ms on Linux) on every scrape.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # one line per scrape would drown the lines that matter


def make_http_server(exporter: Exporter, host: str, port: int) -> WSGIServer:
    """The threaded HTTP server the command runs (also used by the benchmark)."""
    server_class = _ThreadingServer
    if ":" in host:
        server_class = type("_ThreadingServer6", (_ThreadingServer,), {"address_family": socket.AF_INET6})
    return make_server(host, port, exporter.wsgi_app, server_class=server_class, handler_class=_QuietHandler)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen
    try:
        ollama_url = resolve_ollama_url(args.ollama)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.fake_gpus:
        if not args.nvml or args.fake_gpus < 0:
            log.error("--fake-gpus needs a count >= 1 and NVML on (not --no-nvml)")
            return 2
        from exporter.fake_nvml import install_demo_gpus
        install_demo_gpus(args.fake_gpus)
        log.warning("simulating %d GPU(s) with a fake NVML (--fake-gpus): not for a real host", args.fake_gpus)
    exporter = Exporter(ollama_url, timeout=args.timeout, cache=args.cache,
                        nvml=args.nvml, nvml_retry=args.nvml_retry)
    try:
        server = make_http_server(exporter, host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        exporter.close()
        return 1
    bound_port = server.server_address[1]
    shown_host = f"[{host}]" if ":" in host else host
    nvml = {None: "off", True: "up", False: "down"}[exporter.nvml_started]
    log.info("ollama-sidecar exporter %s serving http://%s:%d/metrics (Ollama %s, timeout %gs, cache %gs, NVML %s)",
             __version__, shown_host, bound_port, exporter.fetcher.display_url, args.timeout, args.cache, nvml)
    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, so it cannot run on this (the
        # serving) thread; raising instead would be swallowed by socketserver's
        # per-request error handler when the signal lands mid-request.
        log.info("stopping (%s)", signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        exporter.close()
    return 0
