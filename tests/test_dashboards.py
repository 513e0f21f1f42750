"""The provisioned dashboards: modern panels only, units everywhere, the pinned datasource
everywhere, stable uids, the JSON of the Grafana compose pins (no migration to run), every
variable honoured where it is shown, the panels issue 5 promises on-call, and the Tenants
dashboard of issue 18."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dashboards import render
from dashboards.common import DATASOURCE, UNFILTERED
from dashboards.render import rendered_files
from exporter import metrics as em
from proxy import metrics as pm
from proxy.monitoring import DEFAULT, RECORDED_NAMES
from tests.promql import load_dashboards

ROOT = Path(__file__).resolve().parent.parent
DIR = ROOT / "provisioning/grafana/dashboards"
DASHBOARDS = load_dashboards(DIR)
UIDS = DEFAULT.dashboard_uids
ALLOWED_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table"}
ANGULAR_TYPES = {"graph", "singlestat", "table-old", "grafana-piechart-panel"}


def _panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def _by_uid(uid: str) -> dict:
    return next(d for d in DASHBOARDS.values() if d["uid"] == uid)


def _exprs(dash: dict) -> str:
    return "\n".join([t["expr"] for p in _panels(dash) for t in p["targets"]]
                     + [a["expr"] for a in dash["annotations"]["list"]])


def test_every_dashboard_is_provisioned_with_its_stable_uid():
    assert sorted(d["uid"] for d in DASHBOARDS.values()) == sorted(UIDS.all)
    assert all(len(u) <= 40 for u in UIDS.all)  # Grafana's limit


def test_committed_json_matches_the_code():
    for rel, content in rendered_files().items():
        assert (ROOT / rel).read_text() == content, f"{rel} drifted: run 'ollama-sidecar generate'"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_no_angularjs_panels(name):
    types = {p["type"] for p in DASHBOARDS[name]["panels"]}
    assert not types & ANGULAR_TYPES
    assert types <= ALLOWED_TYPES, types - ALLOWED_TYPES


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_has_a_unit(name):
    for p in _panels(DASHBOARDS[name]):
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']}: no unit"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_target_annotation_and_variable_reads_the_datasource_variable(name):
    # ...whose default is the pinned uid (next test): works on first load, switchable after.
    assert DATASOURCE == {"type": "prometheus", "uid": "${datasource}"}
    dash = DASHBOARDS[name]
    for p in _panels(dash):
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], f"{p['title']}: no query"
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, f"{p['title']} {t['refId']}"
    for a in dash["annotations"]["list"]:
        assert a["datasource"] == DATASOURCE, a["name"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == DATASOURCE, v["name"]


# The variables each dashboard shows. Rollout shows only the route: its recording rules (what
# the rollback alert reads) are summed over proxy replicas and have no model label.
VARIABLES = {
    UIDS.overview: ["datasource", "instance", "route", "model", "exporter"],
    UIDS.rollout: ["datasource", "route"],
    UIDS.gpus: ["datasource", "exporter", "model"],
    UIDS.sessions: ["datasource", "instance", "route", "model"],
    UIDS.tenants: ["datasource", "instance", "tenant"],
}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_variables_start_with_the_pinned_datasource(name):
    dash = DASHBOARDS[name]
    variables = dash["templating"]["list"]
    assert [v["name"] for v in variables] == VARIABLES[dash["uid"]]
    ds = variables[0]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == DEFAULT.datasource_uid  # the default: the provisioned, pinned uid
    labels = [v["label"] for v in variables]
    assert len(set(labels)) == len(labels)  # exemptions name variables by label


# --- Grafana's JSON for the pinned version ------------------------------------------------

def _grafana_image_tag() -> str:
    compose = yaml.safe_load((ROOT / "compose/docker-compose.yml").read_text())
    image = compose["services"]["grafana"]["image"]
    assert image.startswith("grafana/grafana:"), image
    return image.split(":", 1)[1]


def test_the_dashboards_are_written_for_the_grafana_compose_pins():
    """Bumping Grafana in compose fails here until the dashboards were checked against the new
    version's schema (docs/monitoring-stack.md, "Dashboards JSON") and the pins moved."""
    assert _grafana_image_tag() == render.GRAFANA_VERSION
    assert render.SCHEMA_VERSION >= 39


# What grafanalib writes for Grafana 4 and Grafana 11 no longer has (or migrates away).
LEGACY_DASHBOARD = {"sharedCrosshair", "rows", "style", "hideControls", "__inputs", "gnetId"}
LEGACY_PANEL = {"span", "minSpan", "height", "error", "editable", "maxDataPoints", "columns", "fontSize",
                "styles", "legend", "yaxes", "xaxis", "lines", "bars", "nullPointMode", "thresholds"}
LEGACY_TARGET = {"intervalFactor", "step", "metric", "query", "target"}
LEGACY_VARIABLE = {"tags", "tagsQuery", "tagValuesQuery", "useTags", "auto", "auto_min", "auto_count"}


def _nulls(obj, path=""):
    """Paths of every null, but a threshold's base step (Grafana's -Infinity)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if v is None and not (k == "value" and re.search(r"steps\[0\]$", path)):
                yield f"{path}.{k}"
            yield from _nulls(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nulls(v, f"{path}[{i}]")


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_schema_version_of_the_pinned_grafana_and_no_legacy_fields(name):
    """Grafana runs no migration on these dashboards: the v14 one would turn the shared
    crosshair off (sharedCrosshair: false), the others rewrite panels."""
    dash = DASHBOARDS[name]
    assert dash["schemaVersion"] == render.SCHEMA_VERSION
    assert dash["graphTooltip"] == 1  # shared crosshair
    assert not set(dash) & LEGACY_DASHBOARD and set(dash) <= render.DASHBOARD_KEYS
    assert not list(_nulls(dash)), list(_nulls(dash))
    for p in dash["panels"]:
        keys = set(p)
        assert not keys & LEGACY_PANEL, (p["title"], keys & LEGACY_PANEL)
        if p["type"] == "row":
            assert keys <= render.ROW_KEYS, p["title"]
            continue
        assert keys <= render.PANEL_KEYS, (p["title"], keys - render.PANEL_KEYS)
        # Grafana runs a panel plugin's migration whenever pluginVersion differs from its own.
        assert p["pluginVersion"] == render.GRAFANA_VERSION, p["title"]
        assert set(p["fieldConfig"]) == {"defaults", "overrides"}, p["title"]
        assert set(p["fieldConfig"]["defaults"]) <= render.FIELD_CONFIG_KEYS, p["title"]
        assert "displayMode" not in p["fieldConfig"]["defaults"].get("custom", {}), p["title"]  # schema 38
        if p["type"] == "timeseries":
            assert p["options"]["legend"]["showLegend"] is True, p["title"]  # schema 37
        for t in p["targets"]:
            assert not set(t) & LEGACY_TARGET and set(t) <= render.TARGET_KEYS, (p["title"], t["refId"])
            assert t["range"] is not t["instant"] and t["editorMode"] == "code", (p["title"], t["refId"])
    for v in dash["templating"]["list"]:
        assert not set(v) & LEGACY_VARIABLE and set(v) <= render.VARIABLE_KEYS, v["name"]


def test_no_panel_caps_its_data_points():
    """Grafana's default (one point per pixel) everywhere: a fixed 100 made long ranges coarse."""
    for dash in DASHBOARDS.values():
        for p in dash["panels"]:
            assert "maxDataPoints" not in p, f"{dash['title']} / {p['title']}"


# --- every variable honoured where it is shown ------------------------------------------------

_JOB = re.compile(r'\bjob="([^"]+)"')


def _jobs_read(expr: str) -> set[str]:
    """The scrape jobs a query reads: its job matchers; the recording rules aggregate the
    proxy's series; ALERTS holds the alerts on both."""
    jobs = set(_JOB.findall(expr))
    if any(name in expr for name in RECORDED_NAMES):
        jobs.add(DEFAULT.proxy_job)
    if "ALERTS" in expr:
        jobs |= {DEFAULT.proxy_job, DEFAULT.exporter_job}
    return jobs


def _query_variables(dash: dict) -> list[dict]:
    return [v for v in dash["templating"]["list"] if v["type"] == "query" and v.get("hide", 0) != 2]


def _variable_job(var: dict) -> str:
    (job,) = set(_JOB.findall(var["query"]))  # a variable lists the values of one job's label
    return job


def _references(expr: str, name: str) -> bool:
    return re.search(rf"\$(\{{)?{name}\b", expr) is not None


def _exempt(panel: dict, dash: dict) -> dict[str, str]:
    """variable name -> reason, from the sentence dashboards.common.unfiltered appends."""
    pattern = re.escape(UNFILTERED).replace(r"\{labels\}", "(?P<labels>[^:]+)").replace(r"\{reason\}", "(?P<reason>.+)")
    m = re.search(pattern + "$", panel.get("description") or "")
    if m is None:
        return {}
    by_label = {v["label"]: v["name"] for v in dash["templating"]["list"]}
    labels = m.group("labels").split(", ")
    assert all(label in by_label for label in labels), (panel["title"], labels)
    return {by_label[label]: m.group("reason") for label in labels}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_honours_every_variable_its_dashboard_shows(name):
    """A variable lists one job's label values (instance of the proxy, instance of the
    exporter, route, model). Every panel query and annotation that reads that job filters on
    it, unless the panel says in its description that it is not filtered by it, and why
    (dashboards.common.unfiltered: its series do not carry the label)."""
    dash = DASHBOARDS[name]
    variables = _query_variables(dash)
    ignored = []
    for p in _panels(dash):
        exempt = _exempt(p, dash)
        for var in variables:
            missing = [t["refId"] for t in p["targets"]
                       if _variable_job(var) in _jobs_read(t["expr"]) and not _references(t["expr"], var["name"])]
            if var["name"] in exempt:
                assert exempt[var["name"]].strip(), p["title"]
                assert missing, f"{p['title']}: says it is not filtered by {var['label']}, but it is"
            elif missing:
                ignored.append(f"{p['title']} {missing} ignores ${var['name']}")
    for a in dash["annotations"]["list"]:
        for var in variables:
            if _variable_job(var) in _jobs_read(a["expr"]) and not _references(a["expr"], var["name"]):
                ignored.append(f"annotation {a['name']} ignores ${var['name']}")
    assert not ignored, f"{dash['title']}:\n" + "\n".join(ignored)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_reads_a_job_and_instance_variables_stay_in_theirs(name):
    """The proxy and the exporter are different targets: an instance of one is never an
    instance of the other (Overview's "Exporter up" once filtered on the proxy's instances)."""
    dash = DASHBOARDS[name]
    exprs = [(p["title"], t["expr"]) for p in _panels(dash) for t in p["targets"]]
    exprs += [(a["name"], a["expr"]) for a in dash["annotations"]["list"]]
    instance_vars = [v for v in _query_variables(dash) if re.search(r",\s*instance\s*\)\s*$", v["query"])]
    assert instance_vars or dash["uid"] == UIDS.rollout
    for where, expr in exprs:
        jobs = _jobs_read(expr)
        assert jobs, f"{where}: reads no scrape job"
        for var in instance_vars:
            if _references(expr, var["name"]):
                assert jobs == {_variable_job(var)}, f"{where}: filters {jobs} on ${var['name']}"


def test_the_panels_the_issue_named_honour_their_variables():
    overview = _by_uid(UIDS.overview)
    for title in ("Exporter up", "Ollama up"):
        (panel,) = [p for p in _panels(overview) if p["title"] == title]
        assert all("$exporter" in t["expr"] and "$instance" not in t["expr"] for t in panel["targets"])
    rollout = _by_uid(UIDS.rollout)
    assert not any(_exempt(p, rollout) for p in _panels(rollout))
    assert [v["name"] for v in _query_variables(rollout)] == ["route"]


def test_alert_links_name_variables_the_linked_dashboard_shows():
    from alerts.alerting import alert_rules

    shown = {d["uid"]: {v["name"] for v in d["templating"]["list"]} for d in DASHBOARDS.values()}
    for profile in DEFAULT.profiles.values():
        for rule in alert_rules(profile):
            url = rule["annotations"]["dashboard_url"]
            uid = re.match(r"/d/([^?]+)", url).group(1)
            for var in re.findall(r"var-(\w+)=", url):
                assert var in shown[uid], f"{rule['alert']}: {url}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_thresholds_start_with_a_base_step_and_increase(name):
    for p in _panels(DASHBOARDS[name]):
        steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps and steps[0]["value"] is None, p["title"]
        values = [s["value"] for s in steps[1:]]
        assert values == sorted(values), p["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_layout_fits_the_grid_without_overlaps(name):
    taken: set[tuple[int, int]] = set()
    ids = [p["id"] for p in DASHBOARDS[name]["panels"]]
    assert len(ids) == len(set(ids))
    for p in DASHBOARDS[name]["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


def test_overview_answers_is_it_up_traffic_errors_latency_and_routing():
    exprs = _exprs(_by_uid(UIDS.overview))
    for needed in ('up{job="ollama-proxy"', 'up{job="ollama-exporter"', em.OLLAMA_UP.name,
                   pm.REQUESTS.name, "by (error_type)", "histogram_quantile(0.99",
                   pm.TIME_TO_FIRST_TOKEN.name, pm.TOKENS.name, pm.IN_FLIGHT.name,
                   pm.QUEUE_LENGTH.name, pm.ROUTE_CANARY_WEIGHT.name, pm.ROUTE_ROLLED_BACK.name):
        assert needed in exprs, needed


def test_overview_shows_each_replica_its_shared_state_the_lease_and_its_traffic():
    """Several replicas (issue 13): one stat per replica for its state backend, the lease and
    its journal, the count of leaders over every replica (whatever $instance says), and per
    replica its traffic, its state errors and conflicts, and the canary weights it serves."""
    dash = _by_uid(UIDS.overview)
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows.index("Replicas") == rows.index("Is it up") + 1
    panels = {p["title"]: p for p in _panels(dash)}
    (leaders,) = panels["Rollout leaders"]["targets"]
    assert pm.REPLICA_LEADER.name in leaders["expr"] and "$instance" not in leaders["expr"]
    per_replica = {"Shared state per replica": pm.STATE_BACKEND_UP, "Rollout leader per replica": pm.REPLICA_LEADER,
                   "Journaled rollbacks per replica": pm.STATE_JOURNAL_ENTRIES,
                   "Requests/s per replica": pm.REQUESTS,
                   "Shared state: errors and conflicts per replica": pm.STATE_BACKEND_OPERATIONS,
                   "Canary weight per replica": pm.ROUTE_CANARY_WEIGHT}
    for title, spec in per_replica.items():
        for t in panels[title]["targets"]:
            assert spec.name in t["expr"] and "{{instance}}" in t["legendFormat"], title
            assert 'instance=~"$instance"' in t["expr"], title


def _promtool_records(tmp_path, exprs: dict[str, str], cases: list[tuple[list[dict], list[dict]]]) -> None:
    """Record ``exprs`` (name -> PromQL) and check each case (input series, expected samples
    at 10m) with promtool."""
    import subprocess

    from tests.binaries import require_binary

    promtool = require_binary("promtool")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "t", "rules": [{"record": n, "expr": e} for n, e in exprs.items()]}]}))
    tests = []
    for series, expected in cases:
        by_name: dict[str, list] = {}
        for sample in expected:
            by_name.setdefault(sample["labels"].split("{")[0], []).append(sample)
        tests.append({"interval": "1m", "input_series": series, "promql_expr_test": [
            {"expr": name, "eval_time": "10m", "exp_samples": samples} for name, samples in by_name.items()]})
    (tmp_path / "test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_replica_panels_count_the_lease_holders_and_say_no_errors_rather_than_no_data(tmp_path):
    """"Rollout leaders" counts the Redis replicas that hold the lease (0 is 0, not the
    fallback), else the proxies on state files; the errors line of a replica without errors
    is a 0 that says so."""
    from dashboards.overview import NO_ERRORS, rollout_leaders

    panels = {p["title"]: p for p in _panels(_by_uid(UIDS.overview))}
    errors, conflicts = (t["expr"] for t in panels["Shared state: errors and conflicts per replica"]["targets"])
    leader, up, ops = pm.REPLICA_LEADER.name, pm.STATE_BACKEND_UP.name, pm.STATE_BACKEND_OPERATIONS.name
    job = 'job="ollama-proxy"'

    def grafana(expr: str) -> str:
        return expr.replace("$__rate_interval", "2m").replace("$instance", ".*")

    def sync(instance: str, outcome: str = "ok") -> dict:
        """A Redis replica's count of syncs (a proxy on a state file has none)."""
        return {"series": f'{ops}{{{job},instance="{instance}",operation="sync",outcome="{outcome}"}}',
                "values": "0+1x10"}

    _promtool_records(tmp_path, {"leaders": rollout_leaders(DEFAULT), "errors": grafana(errors),
                                 "conflicts": grafana(conflicts)}, [
        # one proxy on a state file: it leads itself
        ([{"series": f'{leader}{{{job},instance="p0"}}', "values": "1x10"}],
         [{"labels": "leaders", "value": 1}]),
        # Redis replicas, one leading; a proxy on a state file beside them is not counted
        ([{"series": f'{leader}{{{job},instance="p1"}}', "values": "1x10"}, sync("p1"),
          {"series": f'{leader}{{{job},instance="p2"}}', "values": "0x10"}, sync("p2"),
          {"series": f'{leader}{{{job},instance="p3"}}', "values": "1x10"}],
         [{"labels": "leaders", "value": 1}]),
        # Redis replicas, none leading: 0, not the state files' fallback
        ([{"series": f'{leader}{{{job},instance="p1"}}', "values": "0x10"}, sync("p1", "error"),
          {"series": f'{leader}{{{job},instance="p2"}}', "values": "0x10"}, sync("p2", "error"),
          {"series": f'{up}{{{job},instance="p1"}}', "values": "0x10"},
          {"series": f'{up}{{{job},instance="p2"}}', "values": "1x10"},
          {"series": f'{ops}{{{job},instance="p1",operation="conflict",outcome="ok"}}', "values": "0+60x10"}],
         [{"labels": "leaders", "value": 0},
          {"labels": 'errors{instance="p1",operation="sync"}', "value": 1 / 60},
          {"labels": 'errors{instance="p2",operation="sync"}', "value": 1 / 60},
          {"labels": 'conflicts{instance="p1"}', "value": 1},
          {"labels": 'conflicts{instance="p2"}', "value": 0}]),
        # a replica that never failed: one 0 line named after it
        ([{"series": f'{up}{{{job},instance="p1"}}', "values": "1x10"}],
         [{"labels": f'errors{{instance="p1",operation="{NO_ERRORS}"}}', "value": 0},
          {"labels": 'conflicts{instance="p1"}', "value": 0}]),
    ])


def test_rollout_compares_the_arms_and_annotates_route_changes_and_alerts():
    dash = _by_uid(UIDS.rollout)
    exprs = _exprs(dash)
    for needed in ("route_arm:ollama_proxy_requests_failed_per_requests:ratio_rate",
                   "route_arm:ollama_proxy_request_duration_seconds:p95",
                   "route_arm:ollama_proxy_time_to_first_token_seconds:p95",
                   pm.TIME_PER_OUTPUT_TOKEN.name, "route_arm:ollama_proxy_completion_tokens:rate",
                   pm.BREAKER_CANARY_FAILURE_RATIO.name):
        assert needed in exprs, needed
    annotations = {a["name"]: a for a in dash["annotations"]["list"]}
    changes = annotations["Route changes"]
    assert pm.ROUTE_CHANGES.name in changes["expr"] and "{{reason}}" in changes["titleFormat"]
    assert 'ALERTS{alertstate="firing"' in annotations["Firing alerts"]["expr"]
    assert all(a["enable"] for a in annotations.values())


def test_gpu_dashboard_shows_models_vram_spill_expiry_cold_loads_and_gpus():
    exprs = _exprs(_by_uid(UIDS.gpus))
    for spec in (em.OLLAMA_MODEL_LOADED_SIZE, em.OLLAMA_MODEL_VRAM, em.OLLAMA_MODEL_VRAM_RATIO,
                 em.OLLAMA_MODEL_EXPIRES_IN, em.GPU_MEMORY_USED, em.GPU_MEMORY_TOTAL,
                 em.GPU_UTILIZATION, em.GPU_POWER, em.GPU_TEMPERATURE, em.GPU_PROCESS_MEMORY):
        assert spec.name in exprs, spec.name
    assert pm.UPSTREAM_LOAD_DURATION.name + "_bucket" in exprs


def test_sessions_dashboard_shows_top_sessions_other_share_and_evictions():
    dash = _by_uid(UIDS.sessions)
    exprs = _exprs(dash)
    assert "topk(10, sum by (session) (increase(ollama_proxy_requests_total" in exprs
    assert "topk(10, sum by (session) (increase(ollama_proxy_tokens_total" in exprs
    assert 'session="other"' in exprs
    assert pm.SESSION_LABELS_EVICTED.name in exprs
    tables = [p for p in _panels(dash) if p["type"] == "table"]
    assert tables and all(t["instant"] for p in tables for t in p["targets"])


def test_route_changes_in_range_count_a_reason_born_inside_the_range(tmp_path):
    """The first rollback by an alert creates its series at 1; the dashboard must count it."""
    import subprocess

    import yaml

    from dashboards.rollout import changes_in_range
    from tests.binaries import require_binary

    promtool = require_binary("promtool")
    expr = changes_in_range("route, reason").replace("$__range", "10m").replace("$route", ".*")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "t", "rules": [{"record": "changes_in_range", "expr": expr}]}]}))
    name = pm.ROUTE_CHANGES.name
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yml"], "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # counted for an hour: two admin changes in the last 10 minutes
                {"series": f'{name}{{job="ollama-proxy",route="chat",reason="admin"}}', "values": "0x50 1x4 2x4 3x10"},
                # born at 1 at minute 55 (first alert rollback), 2 at minute 58
                {"series": f'{name}{{job="ollama-proxy",route="chat",reason="alert:OllamaCanaryErrorRateHigh"}}',
                 "values": "_x55 1x2 2x10"},
            ],
            "promql_expr_test": [{"expr": "changes_in_range", "eval_time": "60m", "exp_samples": [
                {"labels": 'changes_in_range{route="chat",reason="admin"}', "value": 2},
                {"labels": 'changes_in_range{route="chat",reason="alert:OllamaCanaryErrorRateHigh"}', "value": 2},
            ]}],
        }],
    }))
    result = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_panels_say_there_is_no_gpu_rather_than_showing_zero():
    """On a host without GPUs a GPU panel reads "no GPU", never a 0 °C or 0 W that looks
    like a reading: no fallback series in its queries, a noValue text instead."""
    import re

    gpu_series = {spec.name for spec in em.ALL if spec.name.startswith("gpu_")}
    gpu_panels = 0
    for p in _panels(_by_uid(UIDS.gpus)):
        exprs = [t["expr"] for t in p["targets"]]
        if not any(name in e for e in exprs for name in gpu_series):
            continue
        gpu_panels += 1
        assert "no GPU" in p["fieldConfig"]["defaults"].get("noValue", ""), p["title"]
        assert not any(re.search(r"\bor\b|vector\(", e) for e in exprs), p["title"]
    assert gpu_panels == 10


# --- Tenants (issue 18) ---------------------------------------------------------------------

TENANT_COUNTERS = (pm.TENANT_REQUESTS, pm.TENANT_TOKENS, pm.TENANT_GPU_SECONDS, pm.TENANT_LIMITED)
TENANT_GAUGES = (pm.TENANT_LIMIT, pm.TENANT_USAGE)


def test_tenants_dashboard_shows_use_against_limits_refusals_traffic_tokens_gpu_and_who_used_it():
    dash = _by_uid(UIDS.tenants)
    panels = {p["title"]: p for p in _panels(dash)}
    exprs = _exprs(dash)
    for spec in (*TENANT_COUNTERS, *TENANT_GAUGES):
        assert spec.name in exprs, spec.name
    tenant = next(v for v in dash["templating"]["list"] if v["name"] == "tenant")
    assert tenant["multi"] and tenant["includeAll"] and pm.TENANT_REQUESTS.name in tenant["query"]
    for title in ("Requests/s per tenant", "Requests/s per tenant and model", "Tokens/s per tenant, prompt and completion",
                  "GPU time per tenant (GPUs busy)", "Share of GPU time per tenant", "Share of GPU time in range",
                  "Refused requests/s by tenant and limit", "Use against each limit now",
                  "Use against each limit over time", "Error ratio per tenant", "Who used the GPU"):
        assert title in panels, title
    # use against the limits: a bar gauge per tenant and limit, orange at 80 %, red at 100 %
    use = panels["Use against each limit now"]
    assert use["type"] == "bargauge" and use["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert [s["value"] for s in use["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.8, 1]
    assert "{{tenant}} {{limit}}" == use["targets"][0]["legendFormat"]
    # the share of the GPU over the range, and over time: of every tenant's GPU time
    for title in ("Share of GPU time in range", "Share of GPU time per tenant"):
        numerator, denominator = panels[title]["targets"][0]["expr"].split("/ on () group_left")
        assert "$tenant" in numerator and "$tenant" not in denominator, title
    assert "[$__range]" in panels["Share of GPU time in range"]["targets"][0]["expr"]
    # the range table: requests, prompt and completion tokens, GPU seconds, refused, per tenant
    who = panels["Who used the GPU"]
    assert who["type"] == "table" and all(t["instant"] for t in who["targets"])
    columns = [c["options"]["renameByName"] for c in who["transformations"] if c["id"] == "organize"][0]
    assert list(columns.values()) == ["Requests served", "Prompt tokens", "Completion tokens", "GPU seconds",
                                      "GPU share", "Refused"]
    assert all("sum by (tenant) ((increase(" in t["expr"] and "[$__range]" in t["expr"] for t in who["targets"])


def test_tenant_counters_are_summed_over_replicas_and_the_shared_gauges_never():
    """Counters are per replica: summed. The use gauges already hold every replica's figure
    when the replicas share Redis (and the limit is one config every replica runs): their
    max per tenant and limit, never a sum."""
    checked = 0
    for p in _panels(_by_uid(UIDS.tenants)):
        for t in p["targets"]:
            expr = t["expr"]
            if any(spec.name in expr for spec in TENANT_COUNTERS):
                assert re.match(r"[(\s]*sum\b", expr), (p["title"], expr)
                checked += 1
            for spec in TENANT_GAUGES:
                for m in re.finditer(re.escape(spec.name) + r"\{", expr):
                    assert expr[:m.start()].endswith("max by (tenant, limit) ("), (p["title"], expr)
                    checked += 1
    assert checked >= 15


def test_tenant_panels_compute_shares_ranges_and_use_right(tmp_path):
    """Two replicas sharing Redis, two tenants: the use against a limit and the use now
    count the shared figure once; the range table and the GPU share count a series born
    inside the range whole; a tenant without a limit or without tokens reads 0, not blank; a
    tenant without errors has its 'no errors' line."""
    from dashboards.tenants import NO_ERRORS

    dash = _by_uid(UIDS.tenants)
    panels = {p["title"]: p for p in _panels(dash)}

    def grafana(expr: str) -> str:
        return (expr.replace("$__rate_interval", "2m").replace("$__range", "5m")
                .replace("$instance", ".*").replace("$tenant", ".*"))

    def expr(title: str, i: int = 0) -> str:
        return grafana(panels[title]["targets"][i]["expr"])

    who = ["served", "prompt", "completion", "gpu_seconds", "gpu_share", "refused"]
    exprs = {"use": expr("Use against each limit now"), "share_range": expr("Share of GPU time in range"),
             "limit": expr("Configured limits and use now", 0), "use_now": expr("Configured limits and use now", 1),
             "errors": expr("Error ratio per tenant"),
             **{f"who_{name}": expr("Who used the GPU", i) for i, name in enumerate(who)}}
    job = 'job="ollama-proxy"'
    req, tokens, gpu = pm.TENANT_REQUESTS.name, pm.TENANT_TOKENS.name, pm.TENANT_GPU_SECONDS.name
    limited, limit, usage = pm.TENANT_LIMITED.name, pm.TENANT_LIMIT.name, pm.TENANT_USAGE.name
    rpm = 'limit="requests_per_minute"'

    def series(name: str, labels: str, values: str) -> dict:
        return {"series": f"{name}{{{job},{labels}}}", "values": values}

    a_ok = 'tenant="a",route="chat",model="m1",error_type="none"'
    _promtool_records(tmp_path, exprs, [(
        [series(req, f'instance="p1",{a_ok}', "0+10x10"), series(req, f'instance="p2",{a_ok}', "0+10x10"),
         series(req, 'instance="p1",tenant="a",route="none",model="none",error_type="rate_limited"', "0+2x10"),
         series(req, 'instance="p1",tenant="b",route="chat",model="m1",error_type="none"', "0+1x10"),
         series(req, 'instance="p1",tenant="b",route="chat",model="m1",error_type="bad_request"', "0+1x10"),
         series(tokens, 'instance="p1",tenant="a",model="m1",kind="prompt"', "0+100x10"),
         series(tokens, 'instance="p2",tenant="a",model="m1",kind="completion"', "0+20x10"),
         series(gpu, 'instance="p1",tenant="a",model="m1"', "0+6x10"),
         series(gpu, 'instance="p1",tenant="b",model="m1"', "_x8 10 20"),  # born inside the range
         series(limited, f'instance="p1",tenant="a",{rpm}', "0+2x10"),
         series(limited, f'instance="p2",tenant="a",{rpm}', "0x10"),
         series(limit, f'instance="p1",tenant="a",{rpm}', "60x10"),
         series(limit, f'instance="p2",tenant="a",{rpm}', "60x10"),
         series(usage, f'instance="p1",tenant="a",{rpm}', "45x10"),  # every replica's, on each
         series(usage, f'instance="p2",tenant="a",{rpm}', "45x10")],
        [{"labels": 'use{tenant="a",limit="requests_per_minute"}', "value": 0.75},
         {"labels": 'limit{tenant="a",limit="requests_per_minute"}', "value": 60},
         {"labels": 'use_now{tenant="a",limit="requests_per_minute"}', "value": 45},
         {"labels": 'share_range{tenant="a"}', "value": 0.6},
         {"labels": 'share_range{tenant="b"}', "value": 0.4},
         {"labels": f'errors{{tenant="a",error_type="{NO_ERRORS}"}}', "value": 0},
         {"labels": 'errors{tenant="b",error_type="bad_request"}', "value": 0.5},
         {"labels": 'who_served{tenant="a"}', "value": 100}, {"labels": 'who_served{tenant="b"}', "value": 10},
         {"labels": 'who_prompt{tenant="a"}', "value": 500}, {"labels": 'who_prompt{tenant="b"}', "value": 0},
         {"labels": 'who_completion{tenant="a"}', "value": 100},
         {"labels": 'who_completion{tenant="b"}', "value": 0},
         {"labels": 'who_gpu_seconds{tenant="a"}', "value": 30},
         {"labels": 'who_gpu_seconds{tenant="b"}', "value": 20},
         {"labels": 'who_gpu_share{tenant="a"}', "value": 0.6}, {"labels": 'who_gpu_share{tenant="b"}', "value": 0.4},
         {"labels": 'who_refused{tenant="a"}', "value": 10}, {"labels": 'who_refused{tenant="b"}', "value": 0}],
    )])
