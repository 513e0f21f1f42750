"""Every PromQL expression we ship parses (real promtool) and names only metrics that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.render import RULE_FILES
from tests.binaries import require_binary
from tests.promql import (dashboard_exprs, grafana_to_promql, load_dashboards, metric_names, promtool_check_exprs,
                          rule_file_exprs, unknown_metrics)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "provisioning/grafana/dashboards"


def _all_exprs() -> list[tuple[str, str]]:
    exprs = [e for rel in RULE_FILES.values() for e in rule_file_exprs(ROOT / rel)]
    for dash in load_dashboards(DASHBOARDS).values():
        exprs += [(where, grafana_to_promql(expr)) for where, expr in dashboard_exprs(dash)]
    return exprs


# --- the tokenizer ------------------------------------------------------------------------

def test_tokenizer_skips_functions_keywords_labels_strings_and_durations():
    expr = '''
      sum by (route, arm) (rate(ollama_proxy_requests_total{error_type=~"upstream_5xx|timeout", le="+Inf"}[5m]))
      / ignoring (error_type) group_left
      histogram_quantile(0.95, sum without (instance) (rate(ollama_proxy_request_duration_seconds_bucket[1m:30s])))
      > bool 0.5
      and on (route) up{job="not_a_metric_name"} offset 5m
      or max(ALERTS{alertname="OllamaDown"}) by (alertstate) unless absent(ollama_up) * 1e3
    '''
    assert metric_names(expr) == {
        "ollama_proxy_requests_total", "ollama_proxy_request_duration_seconds_bucket", "up",
        "ALERTS", "ollama_up",
    }


def test_tokenizer_reads_recording_rule_names_with_colons():
    assert metric_names('route_arm:ollama_proxy_requests:rate{arm="canary"} >= 0.2') == {
        "route_arm:ollama_proxy_requests:rate"}


def test_unknown_metric_is_reported():
    assert unknown_metrics("sum(rate(ollama_proxy_requestz_total[5m]))") == {"ollama_proxy_requestz_total"}
    assert unknown_metrics('made_up_metric{route="chat"} / up') == {"made_up_metric"}


def test_histogram_base_name_is_not_a_series():
    # Prometheus stores _bucket/_sum/_count; the bare histogram name selects nothing.
    assert unknown_metrics("rate(ollama_proxy_request_duration_seconds[5m])") == {
        "ollama_proxy_request_duration_seconds"}
    assert unknown_metrics("rate(ollama_proxy_request_duration_seconds_count[5m])") == set()


def test_counter_without_total_suffix_is_reported():
    assert unknown_metrics("rate(ollama_proxy_requests[5m])") == {"ollama_proxy_requests"}


def test_grafana_variables_are_replaced_before_parsing():
    assert grafana_to_promql('rate(x{route=~"$route", model=~"${model}"}[$__rate_interval])') == (
        'rate(x{route=~"x", model=~"x"}[5m])')


# --- what we ship ---------------------------------------------------------------------------

def test_there_are_expressions_from_rules_and_every_dashboard():
    wheres = [w for w, _ in _all_exprs()]
    assert sum("rules" in w for w in wheres) >= 40  # 20 rules per profile
    for title in ("Overview", "Rollout", "Ollama and GPUs", "Sessions"):
        assert sum(title in w for w in wheres) >= 8, title


def test_every_expression_names_only_defined_metrics():
    problems = {where: sorted(unknown_metrics(expr)) for where, expr in _all_exprs()}
    problems = {w: names for w, names in problems.items() if names}
    assert not problems, problems


def test_every_expression_parses_with_promtool(tmp_path):
    promtool = require_binary("promtool")
    out = promtool_check_exprs(promtool, _all_exprs(), tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_catches_a_broken_expression(tmp_path):
    # Guards the check above: promtool really parses what we hand it.
    promtool = require_binary("promtool")
    out = promtool_check_exprs(promtool, [("ok", "up"), ("broken", "sum by (route (up)")], tmp_path)
    assert out.returncode != 0
    assert "broken" in out.stdout + out.stderr
