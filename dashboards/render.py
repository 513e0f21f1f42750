"""Render every dashboard to the JSON file Grafana's file provider loads."""

from __future__ import annotations

from dashboards import common, gpus, overview, rollout, sessions
from proxy.monitoring import DEFAULT, MonitoringConfig

DASHBOARD_DIR = "provisioning/grafana/dashboards"
# file stem -> builder; the stem is the uid without the common prefix.
BUILDERS = {
    "overview": overview.build,
    "rollout": rollout.build,
    "ollama-gpus": gpus.build,
    "sessions": sessions.build,
}


def rendered_files(config: MonitoringConfig = DEFAULT) -> dict[str, str]:
    """Relative path -> JSON, sorted by path."""
    return {f"{DASHBOARD_DIR}/{stem}.json": common.to_json(build(config))
            for stem, build in sorted(BUILDERS.items())}
