"""``ollama-sidecar generate``: write the rule files, dashboards JSON and config schema from code.

The generated files are committed; ``--check`` (and a test) fail when they drift from the
code, so a reviewer never has to diff hand-edited YAML or JSON.

Both are rendered from one monitoring config (:mod:`proxy.monitoring`): scrape job names,
the datasource uid, dashboard uids, refresh and alert thresholds. ``--overrides FILE``
renders them for another setup (a YAML mapping of the keys to change), typically with
``--root`` pointing elsewhere than this checkout::

    ollama-sidecar generate --overrides my-monitoring.yaml --root ./out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from proxy.config import render_config_schema
from proxy.monitoring import DEFAULT, MonitoringConfig, with_overrides

CONFIG_SCHEMA = "docs/config.schema.json"


def generated_files(config: MonitoringConfig = DEFAULT) -> dict[str, str]:
    """Every generated file: path relative to the repository root -> exact content (the
    config schema is the same whatever the monitoring config)."""
    # Imported here: grafanalib is only needed by this subcommand.
    from alerts.render import rendered_files as rule_files
    from dashboards.render import rendered_files as dashboard_files

    files = {**rule_files(config), **dashboard_files(config), CONFIG_SCHEMA: render_config_schema()}
    return dict(sorted(files.items()))


def load_overrides(path: Path) -> MonitoringConfig:
    """The default monitoring config with ``path``'s YAML mapping applied; ValueError
    (naming the file and the key) when it cannot be."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read overrides: {exc}") from None
    try:
        return with_overrides(data if data is not None else {})
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def with_proxy_decisions(config: MonitoringConfig, path: Path) -> MonitoringConfig:
    """``config`` with the production profile's decision settings taken from the proxy
    config file at ``path`` (its ``decisions:`` section, the one vocabulary the breaker, the
    rollout gate and the report read), so the rules judge as the proxy does. Only that
    section is read: the file's secrets need not exist where the rules are rendered."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the proxy config: {exc}") from None
    if not isinstance(data, dict) or data.get("decisions") is None:
        return config
    try:
        return with_overrides({"decisions": data["decisions"]}, config)
    except ValueError as exc:
        raise ValueError(f"{path}: {str(exc).replace('overrides: ', '', 1)}") from None


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
    parser.add_argument("--overrides", type=Path, default=None, metavar="FILE",
                        help="YAML file of monitoring settings to change: proxy_job, exporter_job, "
                             "datasource_uid, dashboard_uids, refresh, runbook_base, dashboard_profile, "
                             "profiles.<production|fast>.<threshold> (default: none, which renders "
                             "the committed provisioning/ files)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="the proxy's config file: its `decisions:` section (alpha, margins, minimum "
                             "failures, ttft_slo ...) sets the production rules' decision settings, so the "
                             "rules and the proxy's breaker and rollout gate share one vocabulary")


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
    config = DEFAULT
    if getattr(args, "overrides", None) is not None:
        try:
            config = load_overrides(args.overrides)
        except ValueError as exc:
            print(f"ollama-sidecar generate: {exc}", file=sys.stderr)
            return 2
    if getattr(args, "config", None) is not None:
        try:
            config = with_proxy_decisions(config, args.config)
        except ValueError as exc:
            print(f"ollama-sidecar generate: {exc}", file=sys.stderr)
            return 2
    files = generated_files(config)
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
