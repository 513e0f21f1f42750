"""Building blocks shared by every dashboard: the pinned datasource, selectors, variables, panels.

Every panel, target, annotation and query variable reads the ``datasource`` variable, whose
default is the provisioned datasource's pinned uid (:attr:`MonitoringConfig.datasource_uid`):
a provisioned dashboard works on first load and never points at a datasource Grafana
renamed, and a team with several Prometheus servers can still switch. Every proxy and
exporter series is selected on its scrape job (:class:`Selectors`), so dashboards rendered
for other job names (``ollama-sidecar generate --overrides``) read only those jobs. Panels
are laid out by :class:`Layout` (rows of panels on the 24-column grid).

Variables. Each query variable lists the values of one label of one job: ``instance`` the
proxy's instances, ``exporter`` the exporter's, ``route`` and ``model`` the proxy's (the
exporter's models on the GPU dashboard). Every query that reads a variable's job filters on
it; a panel that cannot (its series do not have the label) says so in its description,
through :func:`unfiltered`, and tests/test_dashboards.py holds every dashboard to that.

:mod:`dashboards.render` writes the JSON in the form the Grafana that compose pins writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grafanalib import core as g

from proxy import metrics as pm
from proxy.monitoring import MonitoringConfig

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}  # the variable, defaulting to the pin
RATE = "$__rate_interval"
# Every panel keeps Grafana's default (about one point per pixel of its width): grafanalib's
# 100 drew a week as one point every 100 minutes. None writes no maxDataPoints at all (the
# renderer drops nulls); no panel needs another value.
MAX_DATA_POINTS = None

# What a GPU panel says where the exporter reads no GPU (CPU-only host, NVML off or down):
# never a 0 °C or 0 W that looks like a reading.
NO_GPU = "no GPU (or NVML down)"


class Selectors:
    """The label matchers of one config's queries: the job always, then the variables."""

    def __init__(self, config: MonitoringConfig) -> None:
        self.proxy = config.proxy_selector
        self.exporter = config.exporter_selector
        self.proxy_instance = f'{self.proxy}, instance=~"$instance"'
        # Every per-request proxy query carries these so the variables filter it.
        self.proxy_filter = f'{self.proxy_instance}, route=~"$route", model=~"$model"'
        # The exporter's own instances: never the proxy's $instance, a list of other addresses.
        self.exporter_instance = f'{self.exporter}, instance=~"$exporter"'


def thresholds(*steps: tuple[str, float | None]) -> list[dict]:
    """Grafana threshold steps; the first step's value is always null (the base colour)."""
    return [{"color": c, "value": None if i == 0 else v} for i, (c, v) in enumerate(steps)]


GREEN_ONLY = thresholds(("green", None))


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
           table: bool = False) -> g.Target:
    return g.Target(
        expr=expr, legendFormat=legend, refId=ref, datasource=DATASOURCE, instant=instant,
        format="table" if table else "time_series",
    )


def _targets(queries: list[tuple[str, str]] | tuple[str, str], *, instant: bool = False) -> list[g.Target]:
    if isinstance(queries, tuple):
        queries = [queries]
    return [target(expr, legend, chr(ord("A") + i), instant=instant) for i, (expr, legend) in enumerate(queries)]


def timeseries(title: str, queries, unit: str, *, description: str = "",
               steps: list[dict] | None = None, threshold_lines: bool = False,
               stacked: bool = False, max_: int | None = None, no_value: str | None = None,
               mappings: list[dict] | None = None) -> g.TimeSeries:
    panel = g.TimeSeries(
        title=title, description=description or None, dataSource=DATASOURCE, maxDataPoints=MAX_DATA_POINTS,
        targets=_targets(queries), unit=unit, thresholds=steps or GREEN_ONLY, mappings=mappings or [],
        thresholdsStyleMode="line" if threshold_lines else "off",
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        fillOpacity=20 if stacked else 0, legendDisplayMode="table",
        legendCalcs=["lastNotNull", "max"], tooltipMode="multi", valueMin=0,
        valueMax=max_,
    )
    if no_value:  # grafanalib's TimeSeries has no noValue; Grafana reads it from the defaults
        panel.extraJson = {"fieldConfig": {"defaults": {"noValue": no_value}}}
    return panel


def stat(title: str, queries, unit: str, *, description: str = "",
         steps: list[dict] | None = None, mappings: list[dict] | None = None,
         graph: bool = False, no_value: str = "no data") -> g.Stat:
    return g.Stat(
        title=title, description=description or None, dataSource=DATASOURCE, maxDataPoints=MAX_DATA_POINTS,
        targets=_targets(queries), format=unit, thresholds=steps or GREEN_ONLY,
        mappings=mappings or [], graphMode="area" if graph else "none",
        colorMode="background", reduceCalc="lastNotNull", noValue=no_value,
    )


def gauge(title: str, queries, unit: str, steps: list[dict], *, min_: float = 0,
          max_: float = 1, description: str = "", no_value: str | None = None) -> g.GaugePanel:
    extra: dict = {"options": {"showThresholdMarkers": True, "showThresholdLabels": False,
                               "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}}
    if no_value:
        extra["fieldConfig"] = {"defaults": {"noValue": no_value}}
    return g.GaugePanel(
        title=title, description=description or None, dataSource=DATASOURCE, maxDataPoints=MAX_DATA_POINTS,
        targets=_targets(queries), format=unit, thresholds=steps, min=min_, max=max_,
        calc="lastNotNull",
        # grafanalib puts these under fieldConfig; Grafana reads them from options.
        extraJson=extra,
    )


def bar_gauge(title: str, queries, unit: str, steps: list[dict], *, min_: float = 0, max_: float = 1,
              description: str = "", instant: bool = True) -> g.GaugePanel:
    """One horizontal bar per series (a tenant, a tenant's limit), coloured by ``steps``.

    grafanalib's own BarGauge writes Grafana 6's JSON (``options.fieldOptions``); this is its
    GaugePanel written as the ``bargauge`` plugin, whose 11.2.0 options :mod:`dashboards.render`
    fills in. ``instant``: one value per series at the end of the range (what "now" or an
    ``increase(…[$__range])`` means), not the last point of a range query.
    """
    return g.GaugePanel(
        title=title, description=description or None, dataSource=DATASOURCE, maxDataPoints=MAX_DATA_POINTS,
        targets=_targets(queries, instant=instant), format=unit, thresholds=steps, min=min_, max=max_,
        calc="lastNotNull",
        extraJson={"type": "bargauge",
                   "fieldConfig": {"defaults": {"color": {"mode": "thresholds"}}},
                   "options": {"displayMode": "basic", "orientation": "horizontal",
                               "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}},
    )


def table(title: str, columns: list[tuple[str, str]], unit: str, *, description: str = "",
          units: dict[str, str] | None = None, sort_by: str | None = None) -> g.Table:
    """An instant-query table: one row per series, its labels then one column per query.

    ``columns`` is [(expr, column title)]; ``unit`` applies to every value column unless
    ``units`` names another for a column title.
    """
    targets = [target(expr, "", chr(ord("A") + i), instant=True, table=True)
               for i, (expr, _) in enumerate(columns)]
    # Grafana names the value column "Value" for one query and "Value #A"… for several.
    raw = ["Value"] if len(columns) == 1 else [f"Value #{t.refId}" for t in targets]
    rename = {r: name for r, (_, name) in zip(raw, columns)}
    transformations: list[dict] = [{"id": "merge", "options": {}}] if len(columns) > 1 else []
    transformations.append({"id": "organize", "options": {
        "excludeByName": {"Time": True, "__name__": True, "job": True}, "renameByName": rename}})
    return g.Table(
        title=title, description=description or None, dataSource=DATASOURCE, maxDataPoints=MAX_DATA_POINTS,
        targets=targets, unit=unit, thresholds=GREEN_ONLY, transformations=transformations,
        overrides=[override_unit(col, u) for col, u in sorted((units or {}).items())],
        sortBy=[g.TableSortByField(displayName=sort_by, desc=True)] if sort_by else [],
    )


def value_mapping(values: dict[str, tuple[str, str]]) -> list[dict]:
    """{"0": ("down", "red")} -> a Grafana value-mapping list."""
    return [{"type": "value", "options": {k: {"text": text, "color": color, "index": i}
                                           for i, (k, (text, color)) in enumerate(values.items())}}]


UP_DOWN = value_mapping({"0": ("DOWN", "red"), "1": ("UP", "green")})
UP_STEPS = thresholds(("red", None), ("green", 1))


def override_unit(field_name: str, unit: str) -> dict:
    return {"matcher": {"id": "byName", "options": field_name},
            "properties": [{"id": "unit", "value": unit}]}


# --- variables ------------------------------------------------------------------------

def query_variable(name: str, label: str, query: str) -> g.Template:
    """A multi-value variable on "All" (``.*``), refreshed when the time range changes."""
    var = g.Template(
        name=name, label=label, dataSource=DATASOURCE, type="query",
        query=query, includeAll=True, multi=True, allValue=".*", refresh=2,
    )
    # Start on "All" the way Grafana stores it (grafanalib would store the literal text).
    var._current = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return var


def variables(config: MonitoringConfig, *query_variables: g.Template) -> g.Templating:
    """The datasource variable (defaulting to the pinned uid), then ``query_variables``."""
    ds = g.Template(name="datasource", label="Datasource", query="prometheus", type="datasource",
                    default=config.datasource_uid, regex=None)
    return g.Templating(list=[ds, *query_variables])


# Listed from `up`, not from build info: a target that is down keeps its place in the list.
def proxy_instance_variable(config: MonitoringConfig) -> g.Template:
    return query_variable("instance", "Proxy instance", f"label_values(up{{{config.proxy_selector}}}, instance)")


def exporter_instance_variable(config: MonitoringConfig) -> g.Template:
    return query_variable("exporter", "Exporter instance",
                          f"label_values(up{{{config.exporter_selector}}}, instance)")


def proxy_variables(config: MonitoringConfig) -> list[g.Template]:
    """instance, route and model of the proxy's requests, each narrowed by the ones before."""
    s = Selectors(config)
    return [
        proxy_instance_variable(config),
        query_variable("route", "Route", f"label_values({pm.REQUESTS.name}{{{s.proxy_instance}}}, route)"),
        query_variable("model", "Model",
                       f'label_values({pm.REQUESTS.name}{{{s.proxy_instance}, route=~"$route"}}, model)'),
    ]


UNFILTERED = "Not filtered by {labels}: {reason}"


def unfiltered(panel, reason: str, *labels: str):
    """Mark ``panel`` as shown under dashboard variables (by label, as the dashboard shows
    them) that its series cannot honour, and say why where the reader sees it: at the end of
    the panel's description. tests/test_dashboards.py reads this sentence back."""
    note = UNFILTERED.format(labels=", ".join(labels), reason=reason)
    panel.description = f"{panel.description} {note}" if panel.description else note
    return panel


# --- layout ---------------------------------------------------------------------------

@dataclass
class Layout:
    """Places panels left to right in rows; each row starts under the tallest panel above."""

    panels: list = field(default_factory=list)
    _y: int = 0

    def row(self, title: str, *cells: tuple[object, int], height: int = 8) -> None:
        self.panels.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=24, x=0, y=self._y)))
        self._y += 1
        x = 0
        for panel, width in cells:
            if x + width > 24:
                raise ValueError(f"row {title!r} is wider than 24 columns")
            panel.gridPos = g.GridPos(h=height, w=width, x=x, y=self._y)
            self.panels.append(panel)
            x += width
        self._y += height


def dashboard(config: MonitoringConfig, uid: str, title: str, description: str, layout: Layout,
              templating: g.Templating, annotations: list[dict] | None = None) -> g.Dashboard:
    return g.Dashboard(
        uid=uid, title=title, description=description, tags=["ollama-sidecar"],
        panels=layout.panels, templating=templating, timezone="browser", refresh=config.refresh,
        time=g.Time("now-1h", "now"),
        # Shared crosshair: hovering one graph marks the same time on every other.
        graphTooltip=1,
        annotations=g.Annotations(list=annotations or []),
    ).auto_panel_ids()


# --- PromQL snippets -------------------------------------------------------------------

def rate(metric: str, matchers: str, by: str = "") -> str:
    """``sum [by (…)] (rate(metric{matchers}[$__rate_interval]))``."""
    agg = f"sum by ({by})" if by else "sum"
    return f"{agg} (rate({metric}{{{matchers}}}[{RATE}]))"


def ratio(numerator: str, denominator: str) -> str:
    """``numerator / denominator``, where a numerator with no series (the event never
    happened: no failure, no overflow) counts as 0 for every series of the denominator.
    With no traffic at all the ratio stays empty: 0/0 is not 0 %."""
    return f"(\n  {numerator}\n  or\n  0 * {denominator}\n)\n/\n{denominator}"


def in_range(metric: str, matchers: str, by: str = "") -> str:
    """What a counter counted over the dashboard's range, summed: ``increase(…[$__range])``
    for the series that existed when the range began, and the whole value of those born
    inside it (a tenant's first request of a model creates its series at that request's
    tokens or seconds, and increase() cannot see a series' first increment)."""
    x = f"{metric}{{{matchers}}}"
    agg = f"sum by ({by})" if by else "sum"
    return f"{agg} ((increase({x}[$__range]) and {x} offset $__range) or {x})"


def quantile(q: float, histogram: str, matchers: str, by: str = "") -> str:
    keep = f"{by}, le" if by else "le"
    return (f"histogram_quantile({q:g}, sum by ({keep}) "
            f"(rate({histogram}_bucket{{{matchers}}}[{RATE}])))")


SERVER_SIDE = 'error_type=~"' + "|".join(sorted(pm.SERVER_SIDE_ERRORS)) + '"'
