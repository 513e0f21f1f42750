"""Test helpers: pull every PromQL expression out of the rule files and dashboards, find the
metric names each one reads, and have the real promtool parse them.

The metric-name check is what keeps dashboards and alerts honest: a query that names a
metric no component exports shows an empty panel or an alert that can never fire, and
nothing else would notice.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from alerts.recording import RECORDED_NAMES
from exporter import metrics as em
from proxy import metrics as pm

# Series Prometheus itself creates: scrape health and alert state.
BUILTIN_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})

DEFINED_SERIES = frozenset(s for spec in (*pm.ALL, *em.ALL) for s in spec.series)
KNOWN_SERIES = DEFINED_SERIES | frozenset(RECORDED_NAMES) | BUILTIN_SERIES

# Words that look like identifiers but are not metric names (when not followed by "(").
KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "atan2", "inf", "nan", "start", "end",
    # aggregation operators, which may be followed by `by (...)` instead of "("
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(r"(?P<num>\d[\w.]*|\.\d[\w]*)|(?P<id>[A-Za-z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """Names of the series ``expr`` selects: not functions, keywords, label names (in
    ``{…}`` or grouping lists), strings, numbers or durations."""
    s = _STRING.sub('""', expr)
    s = _BRACES.sub("{}", s)  # label names and values
    s = _BRACKETS.sub("[]", s)  # range and subquery durations
    s = _GROUPING.sub(lambda m: m.group(1), s)  # by (route, arm) -> by
    names = set()
    for m in _TOKEN.finditer(s):
        word = m.group("id")
        if word is None or word in KEYWORDS:
            continue
        if s[m.end():].lstrip().startswith("("):
            continue  # a function call
        names.add(word)
    return names


def unknown_metrics(expr: str, known: frozenset[str] = KNOWN_SERIES) -> set[str]:
    return metric_names(expr) - known


# --- Grafana ---------------------------------------------------------------------------

_GRAFANA_INTERVAL = re.compile(r"\$__(rate_interval|interval|range)\b")
_GRAFANA_VAR = re.compile(r"\$\{?(\w+)\}?")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)


def grafana_to_promql(expr: str) -> str:
    """What Prometheus receives once Grafana has filled in its variables."""
    expr = _GRAFANA_INTERVAL.sub("5m", expr)
    return _GRAFANA_VAR.sub("x", expr)


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and query variable."""
    title = dashboard["title"]
    out = []
    for panel in dashboard.get("panels", []):
        for t in panel.get("targets", []):
            out.append((f"{title} / panel {panel['title']!r} / {t['refId']}", t["expr"]))
    for a in dashboard["annotations"]["list"]:
        out.append((f"{title} / annotation {a['name']!r}", a["expr"]))
    for v in dashboard["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = _LABEL_VALUES.match(v["query"])
        if m is None:
            raise ValueError(f"{title}: variable {v['name']} is not label_values(selector, label)")
        out.append((f"{title} / variable {v['name']}", m.group("selector")))
    return out


def load_dashboards(directory: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


# --- rule files ------------------------------------------------------------------------

def rule_file_exprs(path: Path) -> list[tuple[str, str]]:
    doc = yaml.safe_load(path.read_text())
    return [
        (f"{path.parent.name}/{path.name} / {rule.get('record') or rule.get('alert')}", rule["expr"])
        for group in doc["groups"] for rule in group["rules"]
    ]


# --- promtool --------------------------------------------------------------------------

def promtool_check_exprs(promtool: str, exprs: list[tuple[str, str]], workdir: Path) -> subprocess.CompletedProcess:
    """Parse every expression with promtool: each becomes a recording rule in a group named
    after where it came from, so an error says which panel or rule is wrong."""
    groups = [
        {"name": f"{i:03d} {where}", "rules": [{"record": "promql_syntax_check", "expr": expr}]}
        for i, (where, expr) in enumerate(exprs)
    ]
    path = workdir / "exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=120)
