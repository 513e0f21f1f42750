"""``ollama-sidecar generate``: write the rule files and dashboards JSON from code.

The generated files are committed; ``--check`` (and a test) fail when they drift from the
code, so a reviewer never has to diff hand-edited YAML or JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def generated_files() -> dict[str, str]:
    """Every generated file: path relative to the repository root -> exact content."""
    # Imported here: grafanalib is only needed by this subcommand.
    from alerts.render import rendered_files as rule_files
    from dashboards.render import rendered_files as dashboard_files

    files = {**rule_files(), **dashboard_files()}
    return dict(sorted(files.items()))


# Directories whose every file of a kind is generated: a file there that the code no longer
# produces (a renamed dashboard) is stale and would still be provisioned.
OWNED_GLOBS = ("provisioning/grafana/dashboards/*.json",)


def orphans(root: Path, files: dict[str, str]) -> list[str]:
    """Generated-looking files under ``root`` that the code no longer produces."""
    found = {p.relative_to(root).as_posix() for pattern in OWNED_GLOBS for p in root.glob(pattern)}
    return sorted(found - set(files))


def _default_root() -> Path:
    # The repository this module lives in when run from a checkout, else the cwd.
    repo = Path(__file__).resolve().parents[2]
    return repo if (repo / "pyproject.toml").is_file() else Path.cwd()


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--root", type=Path, default=None,
                        help="repository root to write into (default: this checkout, else the cwd)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and list the files that differ from the code")


def drifted(root: Path, files: dict[str, str]) -> list[str]:
    """Paths whose committed content differs from what the code generates (or is missing)."""
    out = []
    for rel, content in files.items():
        path = root / rel
        try:
            current = path.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            current = None
        if current != content:
            out.append(rel)
    return out


def run(args: argparse.Namespace) -> int:
    root: Path = args.root if args.root is not None else _default_root()
    files = generated_files()
    if args.check:
        stale = drifted(root, files)
        for rel in stale:
            print(f"drifted: {rel}", file=sys.stderr)
        for rel in orphans(root, files):
            print(f"no longer generated: {rel}", file=sys.stderr)
            stale.append(rel)
        if stale:
            print("run 'ollama-sidecar generate' and commit the result", file=sys.stderr)
            return 1
        print(f"{len(files)} generated files up to date")
        return 0
    written = 0
    for rel in drifted(root, files):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(files[rel], encoding="utf-8")
        tmp.replace(path)  # never leave a half-written file for Prometheus to load
        print(f"wrote {rel}")
        written += 1
    for rel in orphans(root, files):
        (root / rel).unlink()
        print(f"removed {rel} (no longer generated)")
        written += 1
    print(f"{len(files)} generated files, {written} changed")
    return 0
