"""Render every dashboard to the JSON file Grafana's file provider loads, in the form the
Grafana that compose pins writes itself, so that Grafana migrates nothing.

grafanalib 0.7.1 writes the JSON of Grafana 4 (``schemaVersion: 12``, ``sharedCrosshair``,
``rows``, panel ``span``/``height``/``error``, ``maxDataPoints: 100``, Prometheus targets
with ``intervalFactor``/``step``/``metric``, gauge options under ``fieldConfig``, a table
``displayMode``). Grafana loads such a dashboard through every schema migration since 12,
and the v14 one alone turns ``graphTooltip: 1`` with ``sharedCrosshair: false`` into no
shared crosshair. :func:`modernise` turns grafanalib's output into schema 39 JSON:

* the keys of each object are those ``@grafana/schema`` 11.2.0 defines for it (the
  dashboard kind's ``Dashboard``, ``Panel``, ``RowPanel``, ``VariableModel``,
  ``VariableOption``, ``FieldConfig``, ``FieldConfigSource``; ``@grafana/prometheus``
  11.2.0's query model for targets); anything else grafanalib writes is dropped, and so is
  every null (``value: null`` of a threshold's base step stays: it is how Grafana writes
  -Infinity);
* each panel's ``options`` start from the options its plugin requires in 11.2.0 (the
  ``defaultOptions`` of its ``panelcfg``), and each panel carries ``pluginVersion`` 11.2.0,
  so Grafana runs no panel migration either (it runs one whenever ``pluginVersion``
  differs from its own);
* Prometheus targets say ``range``/``instant`` and ``editorMode: "code"`` explicitly.

How this was checked against Grafana's own types (once, by hand: no network in tests) is in
docs/monitoring-stack.md, "Dashboards JSON". When compose moves to another Grafana, bump
:data:`GRAFANA_VERSION` and :data:`SCHEMA_VERSION` and run that check again
(tests/test_dashboards.py fails until the two pins agree).
"""

from __future__ import annotations

import json
from typing import Any

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

from dashboards import gpus, overview, rollout, sessions, tenants
from proxy.monitoring import DEFAULT, MonitoringConfig

DASHBOARD_DIR = "provisioning/grafana/dashboards"
# file stem -> builder; the stem is the uid without the common prefix.
BUILDERS = {
    "overview": overview.build,
    "rollout": rollout.build,
    "ollama-gpus": gpus.build,
    "sessions": sessions.build,
    "tenants": tenants.build,
}

GRAFANA_VERSION = "11.2.0"  # compose/docker-compose.yml: grafana/grafana:11.2.0
SCHEMA_VERSION = 39  # DASHBOARD_SCHEMA_VERSION of Grafana 11.2.0 (@grafana/schema defaultDashboard)

# --- the keys @grafana/schema 11.2.0 defines (dashboard_types.gen.d.ts) -----------------------
# Dashboard, without the ones Grafana assigns (id, version) or that are not ours (gnetId,
# revision, snapshot).
DASHBOARD_KEYS = frozenset({
    "annotations", "description", "editable", "fiscalYearStartMonth", "graphTooltip", "links",
    "liveNow", "panels", "preload", "refresh", "schemaVersion", "tags", "templating", "time",
    "timepicker", "timezone", "title", "uid", "weekStart",
})
TIMEPICKER_KEYS = frozenset({"hidden", "nowDelay", "refresh_intervals", "time_options"})
PANEL_KEYS = frozenset({
    "cacheTimeout", "datasource", "description", "fieldConfig", "gridPos", "hideTimeOverride", "id",
    "interval", "libraryPanel", "links", "maxDataPoints", "maxPerRow", "options", "pluginVersion",
    "queryCachingTTL", "repeat", "repeatDirection", "targets", "timeFrom", "timeShift", "title",
    "transformations", "transparent", "type",
})
ROW_KEYS = frozenset({"collapsed", "datasource", "gridPos", "id", "panels", "repeat", "title", "type"})
FIELD_CONFIG_SOURCE_KEYS = frozenset({"defaults", "overrides"})
FIELD_CONFIG_KEYS = frozenset({
    "color", "custom", "decimals", "description", "displayName", "displayNameFromDS", "filterable",
    "links", "mappings", "max", "min", "noValue", "path", "thresholds", "unit", "writeable",
})
VARIABLE_KEYS = frozenset({
    "allValue", "current", "datasource", "description", "hide", "includeAll", "label", "multi",
    "name", "options", "query", "refresh", "regex", "skipUrlSync", "sort", "type",
})
VARIABLE_OPTION_KEYS = frozenset({"selected", "text", "value"})
# The Prometheus query model (@grafana/prometheus 11.2.0, PromQuery) as these dashboards use it;
# intervalFactor is deprecated there, step/metric/query/target are Grafana 4's.
TARGET_KEYS = frozenset({
    "datasource", "editorMode", "exemplar", "expr", "format", "hide", "instant", "interval",
    "legendFormat", "range", "refId",
})

# --- what each panel plugin requires in 11.2.0 (panelcfg defaultOptions) ----------------------
PLUGIN_OPTIONS: dict[str, dict[str, Any]] = {
    "stat": {"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
             "percentChangeColorMode": "standard", "showPercentChange": False, "textMode": "auto",
             "wideLayout": True},
    "gauge": {"minVizHeight": 75, "minVizWidth": 75, "orientation": "auto", "showThresholdLabels": False,
              "showThresholdMarkers": True, "sizing": "auto"},
    # bargauge: 11.2.0's panelcfg (its legend and textMode came in later versions); orientation
    # and reduceOptions are SingleStatBaseOptions', which every panel sets itself.
    "bargauge": {"displayMode": "gradient", "maxVizHeight": 300, "minVizHeight": 16, "minVizWidth": 8,
                 "namePlacement": "auto", "orientation": "auto", "showUnfilled": True, "sizing": "auto",
                 "valueMode": "color"},
    "table": {"cellHeight": "sm", "footer": {"countRows": False, "reducer": [], "show": False},
              "frameIndex": 0, "showHeader": True, "showTypeIcons": False},
    "timeseries": {},
}
# A table cell's field config: grafanalib's `displayMode` became `cellOptions` in schema 38.
TABLE_CUSTOM = {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False}


def _only(obj: dict, keys: frozenset[str]) -> dict:
    return {k: v for k, v in obj.items() if k in keys and v is not None}


def _no_nulls(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if v is not None}


def _field_config(panel_type: str, source: dict) -> dict:
    defaults = _only(source.get("defaults", {}), FIELD_CONFIG_KEYS)
    custom = _no_nulls(defaults.pop("custom", None) or {})
    if panel_type == "table":
        mode = custom.pop("displayMode", "auto")
        custom = {**TABLE_CUSTOM, **custom, "cellOptions": {"type": mode}}
    if custom:  # stat and gauge have no custom field config
        defaults["custom"] = custom
    return {"defaults": defaults, "overrides": source.get("overrides", [])}


def _target(target: dict) -> dict:
    out = _only(target, TARGET_KEYS)
    if not out.get("interval"):
        out.pop("interval", None)  # "" = the panel's interval
    if out.get("hide") is False:
        del out["hide"]
    instant = bool(out.get("instant"))
    out.update(instant=instant, range=not instant, editorMode="code")
    return out


def _panel(panel: dict) -> dict:
    if panel["type"] == "row":
        return _only(panel, ROW_KEYS)
    if panel["type"] not in PLUGIN_OPTIONS:
        raise ValueError(f"panel {panel.get('title')!r}: type {panel['type']!r} is not checked against "
                         f"Grafana {GRAFANA_VERSION}'s schema (see docs/monitoring-stack.md, Dashboards JSON)")
    out = _only(panel, PANEL_KEYS)
    out["pluginVersion"] = GRAFANA_VERSION
    out["options"] = {**PLUGIN_OPTIONS[panel["type"]], **panel.get("options", {})}
    if panel["type"] == "timeseries":
        out["options"]["legend"] = {"showLegend": True, **out["options"]["legend"]}
    out["fieldConfig"] = _field_config(panel["type"], panel.get("fieldConfig", {}))
    out["targets"] = [_target(t) for t in panel.get("targets", [])]
    return out


def _variable(var: dict) -> dict:
    out = _only(var, VARIABLE_KEYS)
    if "current" in out:
        out["current"] = _only(out["current"], VARIABLE_OPTION_KEYS)
    return out


def modernise(dashboard: dict) -> dict:
    """grafanalib's JSON (plain dicts) -> the schema 39 JSON Grafana 11.2 itself writes."""
    out = _only(dashboard, DASHBOARD_KEYS)
    out["schemaVersion"] = SCHEMA_VERSION
    out["timepicker"] = _only(out.get("timepicker", {}), TIMEPICKER_KEYS)
    out["panels"] = [_panel(p) for p in dashboard["panels"]]
    out["templating"] = {"list": [_variable(v) for v in dashboard["templating"]["list"]]}
    return out


def to_json(dash: g.Dashboard) -> str:
    """Grafana's own JSON for the pinned version (:func:`modernise`) with stable formatting:
    sorted keys, fixed indentation, trailing newline."""
    data = json.loads(json.dumps(dash.to_json_data(), cls=DashboardEncoder))
    return json.dumps(modernise(data), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def rendered_files(config: MonitoringConfig = DEFAULT) -> dict[str, str]:
    """Relative path -> JSON, sorted by path."""
    return {f"{DASHBOARD_DIR}/{stem}.json": to_json(build(config))
            for stem, build in sorted(BUILDERS.items())}
