"""One monitoring config (proxy/monitoring.py) renders dashboards and rules alike: the two
packages never import each other, every query selects the configured scrape jobs, and
``ollama-sidecar generate --overrides FILE`` renders for someone else's job names,
datasource, uids and thresholds."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from exporter import metrics as em
from proxy import cli
from proxy import metrics as pm
from proxy.commands.generate import generated_files
from proxy.monitoring import DEFAULT, RECORDED_NAMES, with_overrides
from tests.promql import KEYWORDS, dashboard_exprs

ROOT = Path(__file__).resolve().parent.parent

PROXY_SERIES = frozenset(s for spec in pm.ALL for s in spec.series)
EXPORTER_SERIES = frozenset(s for spec in em.ALL for s in spec.series)

OVERRIDES = {
    "proxy_job": "llm-gateway",
    "exporter_job": "gpu-node",
    "datasource_uid": "team-prometheus",
    "refresh": "1m",
    "dashboard_uids": {"overview": "llm-overview", "rollout": "llm-rollout", "gpus": "llm-gpus",
                       "sessions": "llm-sessions", "tenants": "llm-tenants"},
    "runbook_base": "https://wiki.example.com/llm-runbooks",
    "profiles": {"production": {"decisions": {"max_failure_ratio": 0.07}, "window": "10m", "gpu_temperature_celsius": 90},
                 "fast": {"down_for": "20s"}},
}


# --- the two packages stay apart -------------------------------------------------------------

def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize(("package", "other"), [("dashboards", "alerts"), ("alerts", "dashboards")])
def test_dashboards_and_alerts_never_import_each_other(package, other):
    for path in sorted((ROOT / package).glob("*.py")):
        bad = {m for m in imported_modules(path) if m == other or m.startswith(other + ".")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: share it through proxy/monitoring.py"


def test_the_config_module_needs_neither_grafanalib_nor_yaml_nor_either_package():
    imported = imported_modules(ROOT / "proxy" / "monitoring.py")
    assert not {m for m in imported if m.split(".")[0] in ("grafanalib", "yaml", "alerts", "dashboards")}


# --- every query selects the configured jobs ---------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(r"[A-Za-z_:][\w:]*")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"')


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(series name, {label: value} of its = matchers) for every series ``expr`` selects."""
    # Blank out strings and label matchers (keeping offsets) to find names, then read the
    # matchers from the original text.
    masked = _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)
    masked = _BRACES.sub(lambda m: "{" + " " * (len(m.group()) - 2) + "}", masked)
    masked = _GROUPING.sub(lambda m: m.group(1) + " " * (len(m.group()) - len(m.group(1))), masked)
    found = []
    for m in _TOKEN.finditer(masked):
        if m.start() and (masked[m.start() - 1].isalnum() or masked[m.start() - 1] in "_:.$"):
            continue  # inside a number, a duration (1e3, 5m) or a Grafana variable
        if m.group() in KEYWORDS:
            continue
        rest = masked[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function
        braces = ""
        if rest.startswith("{"):
            start = masked.index("{", m.end())
            braces = expr[start:masked.index("}", start) + 1]
        found.append((m.group(), {k: v for k, op, v in _MATCHER.findall(braces) if op == "="}))
    return found


def test_the_selector_reader_reads_names_and_equality_matchers():
    expr = ('sum(rate(ollama_proxy_requests_total{job="a", route=~"$route", session="up"}[5m]))\n'
            '/ on (route) up{job="b"} or label_replace(x, "y", "ollama_up", "", "") > 1e3')
    assert selectors(expr) == [("ollama_proxy_requests_total", {"job": "a", "session": "up"}),
                               ("up", {"job": "b"}), ("x", {})]


def rendered_queries(files: dict[str, str]) -> list[tuple[str, str]]:
    """(where, PromQL) of every rule, panel target, annotation and variable in ``files``."""
    out = []
    for rel, text in files.items():
        if not rel.startswith("provisioning/"):
            continue  # the config schema: no queries
        if rel.endswith(".json"):
            out += dashboard_exprs(json.loads(text))
        else:
            out += [(f"{rel} / {r.get('record') or r.get('alert')}", r["expr"])
                    for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    return out


def assert_every_query_selects_the_jobs(files: dict[str, str], proxy_job: str, exporter_job: str) -> int:
    checked = 0
    for where, expr in rendered_queries(files):
        for name, matchers in selectors(expr):
            if name in PROXY_SERIES:
                assert matchers.get("job") == proxy_job, f"{where}: {name} without job={proxy_job!r}"
            elif name in EXPORTER_SERIES:
                assert matchers.get("job") == exporter_job, f"{where}: {name} without job={exporter_job!r}"
            elif name == "up":
                assert matchers.get("job") in (proxy_job, exporter_job), f"{where}: up without our job"
            else:
                # Recorded series are aggregated by route and arm from job-selected inputs;
                # ALERTS is Prometheus's own.
                assert name in RECORDED_NAMES or name == "ALERTS", f"{where}: unexpected series {name}"
                continue
            checked += 1
    return checked


def test_every_committed_query_selects_the_default_jobs():
    files = generated_files()
    assert assert_every_query_selects_the_jobs(files, DEFAULT.proxy_job, DEFAULT.exporter_job) > 100


def test_rendering_with_other_job_names_leaves_no_default_behind():
    config = with_overrides(OVERRIDES)
    files = generated_files(config)
    assert set(files) == set(generated_files())  # same files, other content
    assert assert_every_query_selects_the_jobs(files, "llm-gateway", "gpu-node") > 100
    for rel, text in files.items():
        for default in (DEFAULT.proxy_job, DEFAULT.exporter_job, DEFAULT.datasource_uid, DEFAULT.runbook_base,
                        *DEFAULT.dashboard_uids.all):
            assert default not in text, f"{rel} still says {default!r}"


def test_overrides_reach_uids_datasource_refresh_runbooks_and_thresholds():
    files = generated_files(with_overrides(OVERRIDES))
    dashboards = {json.loads(t)["uid"]: json.loads(t) for rel, t in files.items() if rel.endswith(".json") and rel.startswith("provisioning/")}
    assert set(dashboards) == set(OVERRIDES["dashboard_uids"].values())
    for dash in dashboards.values():
        assert dash["refresh"] == "1m"
        assert dash["templating"]["list"][0]["current"]["value"] == "team-prometheus"
    rollout = dashboards["llm-rollout"]
    steps = {p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]
             for p in rollout["panels"] if p["type"] != "row"}
    assert steps["Server-side failure ratio by arm (what the rollback alert sees)"] == [None, 0.07]
    assert "10m in production" in json.dumps(rollout)
    temperature = next(p for p in dashboards["llm-gpus"]["panels"] if p["title"] == "GPU temperature")
    assert [s["value"] for s in temperature["fieldConfig"]["defaults"]["thresholds"]["steps"]][-1] == 90

    production = yaml.safe_load(files["provisioning/prometheus/rules/ollama-sidecar.rules.yml"])
    rules = {r.get("alert") or r.get("record"): r for r in production["groups"][0]["rules"]}
    canary_rule = rules["OllamaCanaryErrorRateHigh"]["expr"]
    assert 'ratio_rate{arm="canary"} > 0.07\n' in canary_rule  # the absolute limit, with no stable traffic
    assert "* 600 >= 6" in canary_rule  # failures counted over the overridden 10m window
    assert "[10m]" in rules["route_arm:ollama_proxy_requests:rate"]["expr"]
    assert rules["OllamaGPUHot"]["expr"].endswith("> 90")
    assert rules["OllamaDown"]["annotations"]["runbook_url"] == "https://wiki.example.com/llm-runbooks#ollamadown"
    assert rules["OllamaDown"]["annotations"]["dashboard_url"] == "/d/llm-overview"
    fast = yaml.safe_load(files["provisioning/prometheus/rules-fast/ollama-sidecar.rules.yml"])
    assert {r["alert"]: r for r in fast["groups"][0]["rules"] if "alert" in r}["OllamaProxyDown"]["for"] == "20s"


def test_no_overrides_is_the_default_config():
    assert with_overrides({}) == DEFAULT
    assert generated_files(with_overrides({})) == generated_files()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"proxy_jobs": "x"}, "unknown key 'proxy_jobs'"),
    ({"proxy_job": ""}, "proxy_job must be a non-empty string"),
    ({"exporter_job": 3}, "exporter_job must be a non-empty string"),
    ({"proxy_job": "same", "exporter_job": "same"}, "proxy_job and exporter_job must differ"),
    ({"dashboard_uids": {"overview": "x" * 41}}, "dashboard_uids.overview"),
    ({"dashboard_uids": {"home": "x"}}, "unknown key dashboard_uids.home"),
    ({"profiles": {"staging": {}}}, "profiles.staging: no such profile"),
    ({"profiles": {"production": {"window": "5 minutes"}}}, "profiles.production.window must be a Prometheus duration"),
    ({"profiles": {"production": {"decisions": {"max_failure_ratio": "high"}}}}, "profiles.production.decisions.max_failure_ratio: must be a number"),
    ({"profiles": {"fast": {"colour": 1}}}, "unknown key profiles.fast.colour"),
    ({"dashboard_profile": "staging"}, "dashboard_profile 'staging' is not one of"),
    (["proxy_job"], "expected a mapping"),
])
def test_a_bad_override_names_its_key(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        with_overrides(overrides)


def test_generate_with_an_overrides_file(tmp_path, capsys):
    overrides = tmp_path / "monitoring.yaml"
    overrides.write_text(yaml.safe_dump(OVERRIDES))
    out = tmp_path / "out"
    assert cli.main(["generate", "--overrides", str(overrides), "--root", str(out)]) == 0
    written = {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*") if p.is_file()}
    assert written == generated_files(with_overrides(OVERRIDES))
    assert cli.main(["generate", "--check", "--overrides", str(overrides), "--root", str(out)]) == 0
    # The same files are stale for the default config.
    assert cli.main(["generate", "--check", "--root", str(out)]) == 1

    overrides.write_text("proxy_job: [a, b]\n")
    capsys.readouterr()
    assert cli.main(["generate", "--overrides", str(overrides), "--root", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(overrides) in err and "proxy_job must be a non-empty string" in err
