"""``ollama-sidecar simulate``: an Ollama API on 127.0.0.1:11434 that needs no GPU."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from proxy.common.listen import parse_listen
from proxy.simulator.app import build_app
from proxy.simulator.profiles import DEFAULT_PROFILES_PATH, ProfileError, load_profiles
from proxy.simulator.scheduler import CLI_DEFAULT_PARALLEL, DEFAULT_MAX_QUEUE


def _host_port(value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(minimum: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {number}")
        return number

    return parse


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 11434), metavar="HOST:PORT",
                        help="address to serve on (default 127.0.0.1:11434, Ollama's)")
    parser.add_argument("--profiles", default=str(DEFAULT_PROFILES_PATH), metavar="FILE.yaml",
                        help="model profiles (default: the packaged default_profiles.yaml)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible fates and texts")
    parser.add_argument("--parallel", type=_count(1), default=CLI_DEFAULT_PARALLEL, metavar="N",
                        help="requests served at once per loaded model, like OLLAMA_NUM_PARALLEL; more wait in "
                             "a FIFO queue (default %(default)s: Ollama's automatic choice when memory allows, 1 "
                             "otherwise; it keeps the demo's six clients over two models mostly unqueued); "
                             "embedding models always get 1")
    parser.add_argument("--max-queue", type=_count(0), default=DEFAULT_MAX_QUEUE, metavar="N",
                        help="requests that may wait before the rest are answered 503 'server busy', like "
                             "OLLAMA_MAX_QUEUE (default %(default)s, Ollama's)")
    parser.add_argument("--no-split-writes", action="store_true",
                        help="write each stream line whole (default: split/pack lines like TCP does)")


def run(args: argparse.Namespace) -> int:
    try:
        profiles = load_profiles(args.profiles)
    except (OSError, ProfileError) as exc:
        print(f"ollama-sidecar simulate: {exc}", file=sys.stderr)
        return 2
    host, port = args.listen
    app = build_app(profiles, seed=args.seed, split_writes=not args.no_split_writes, parallel=args.parallel,
                    max_queue=args.max_queue)
    print(f"Ollama simulator on http://{host}:{port} with models: {', '.join(profiles)}", flush=True)
    print(f"  {args.parallel} parallel request(s) per model, at most {args.max_queue} waiting", flush=True)
    print(f"  control: http://{host}:{port}/_simulator/models (PATCH .../MODEL to change a profile), "
          f"/_simulator/scheduler (PATCH parallel, max_queue)", flush=True)
    try:
        web.run_app(app, host=host, port=port, print=None, access_log=None, shutdown_timeout=1.0,
                    handler_cancellation=True)
    except OSError as exc:
        print(f"ollama-sidecar simulate: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
