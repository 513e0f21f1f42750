"""The four provisioned dashboards: modern panels only, units everywhere, the pinned
datasource everywhere, stable uids, and the panels issue 5 promises on-call."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboards.common import DATASOURCE
from dashboards.render import rendered_files
from exporter import metrics as em
from proxy import metrics as pm
from proxy.monitoring import DEFAULT
from tests.promql import load_dashboards

ROOT = Path(__file__).resolve().parent.parent
DIR = ROOT / "provisioning/grafana/dashboards"
DASHBOARDS = load_dashboards(DIR)
UIDS = DEFAULT.dashboard_uids
ALLOWED_TYPES = {"row", "timeseries", "stat", "gauge", "table"}
ANGULAR_TYPES = {"graph", "singlestat", "table-old", "grafana-piechart-panel"}


def _panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def _by_uid(uid: str) -> dict:
    return next(d for d in DASHBOARDS.values() if d["uid"] == uid)


def _exprs(dash: dict) -> str:
    return "\n".join([t["expr"] for p in _panels(dash) for t in p["targets"]]
                     + [a["expr"] for a in dash["annotations"]["list"]])


def test_the_four_dashboards_are_provisioned_with_stable_uids():
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


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_variables_datasource_instance_route_model(name):
    variables = DASHBOARDS[name]["templating"]["list"]
    assert [v["name"] for v in variables] == ["datasource", "instance", "route", "model"]
    ds = variables[0]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == DEFAULT.datasource_uid  # the default: the provisioned, pinned uid


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
    for needed in ('up{job="ollama-proxy"', 'up{job="ollama-exporter"}', em.OLLAMA_UP.name,
                   pm.REQUESTS.name, "by (error_type)", "histogram_quantile(0.99",
                   pm.TIME_TO_FIRST_TOKEN.name, pm.TOKENS.name, pm.IN_FLIGHT.name,
                   pm.QUEUE_LENGTH.name, pm.ROUTE_CANARY_WEIGHT.name, pm.ROUTE_ROLLED_BACK.name):
        assert needed in exprs, needed


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
    assert gpu_panels == 6
