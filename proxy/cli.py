"""The ``ollama-sidecar`` command: one entry point, one module per subcommand.

Subcommand modules are imported only when chosen, so ``ollama-sidecar status`` does not
pay for grafanalib and ``ollama-sidecar proxy`` does not import NVML. Each module
provides ``add_arguments(parser, command)`` and ``run(args) -> int`` (``args.command``
holds the subcommand's name, for modules that serve several).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from proxy import __version__

# name -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "proxy": ("proxy.commands.server", "run the labelled, canary-routing proxy in front of Ollama"),
    "exporter": ("exporter.server", "serve Ollama model state and NVIDIA GPU metrics"),
    "generate": ("proxy.commands.generate", "write dashboards JSON and Prometheus rule files"),
    "status": ("proxy.commands.ctl", "show routes, weights, rollback state and live rates"),
    "route": ("proxy.commands.ctl", "change a route: ollama-sidecar route set ROUTE --weight W"),
    "rollback": ("proxy.commands.ctl", "send a route's traffic back to its stable model"),
    "promote": ("proxy.commands.ctl", "make a route's canary its stable model"),
    "resume": ("proxy.commands.ctl", "clear a rollback and restore the canary weight"),
    "rollout": ("proxy.commands.rollout_ctl", "progressive rollout: start|status|pause|resume|promote|abort"),
    "session-label": ("proxy.commands.ctl", "the session label a running proxy gives a session or user id"),
    "report": ("proxy.commands.report", "A/B report of a route's canary against stable from Prometheus"),
    "usage": ("proxy.commands.usage", "per-tenant requests, tokens and GPU time, from the proxy or Prometheus"),
    "simulate": ("proxy.simulator.server", "run an Ollama API simulator (no GPU needed)"),
    "demo": ("proxy.commands.demo", "the whole closed loop on this machine: canary goes bad, rollback"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: ollama-sidecar COMMAND [options]   (ollama-sidecar {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run 'ollama-sidecar COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"ollama-sidecar {__version__}")
        return 0
    command = argv.pop(0)
    if command not in COMMANDS:
        print(f"ollama-sidecar: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"ollama-sidecar {command}", description=COMMANDS[command][1])
    module.add_arguments(parser, command)
    args = parser.parse_args(argv)
    args.command = command
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
