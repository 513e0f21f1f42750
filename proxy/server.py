"""``ollama-sidecar proxy``: start the proxy with flags, env and an optional YAML file."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from proxy.app import build_app
from proxy.config import ConfigError, load_config

log = logging.getLogger("ollama_sidecar.proxy")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--listen", help="HOST:PORT to listen on (env OLLAMA_SIDECAR_LISTEN; "
                        "default 127.0.0.1:11435)")
    parser.add_argument("--upstream", help="Ollama URL (default: OLLAMA_HOST as Ollama reads it, "
                        "else http://127.0.0.1:11434)")
    parser.add_argument("--config", help="YAML config file (routes, timeouts, limits…)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        overrides = {"listen": args.listen, "upstream": args.upstream}
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"ollama-sidecar proxy: config error: {exc}", file=sys.stderr)
        return 2
    host, port = split_listen(config.listen)
    app = build_app(config, overrides=overrides)
    log.info("proxy listening on http://%s:%d, forwarding to %s (metrics at /metrics)",
             host, port, config.upstream)
    # handler_cancellation: a client that disconnects cancels its handler, which closes the
    # upstream request at once instead of letting Ollama generate for nobody.
    web.run_app(app, host=host, port=port, handler_cancellation=True, access_log=None,
                print=None, shutdown_timeout=5)
    return 0
