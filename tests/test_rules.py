"""The generated Prometheus rule files: valid, unit-tested with promtool, and well-formed
for the people (runbook, dashboard) and the proxy (action/route labels) that consume them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts.alerting import ROLLBACK_ALERTS, RUNBOOK_BASE
from alerts.render import RULE_FILES
from proxy.monitoring import DEFAULT
from tests.binaries import require_binary

ROOT = Path(__file__).resolve().parent.parent
UNIT_TESTS = {"production": ROOT / "alerts/tests/production.test.yml",
              "fast": ROOT / "alerts/tests/fast.test.yml"}
RUNBOOK = ROOT / "docs/runbooks.md"


def _rules(profile: str) -> list[dict]:
    doc = yaml.safe_load((ROOT / RULE_FILES[profile]).read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts(profile: str) -> dict[str, dict]:
    return {r["alert"]: r for r in _rules(profile) if "alert" in r}


@pytest.mark.parametrize("profile", sorted(RULE_FILES))
def test_promtool_check_rules_accepts_the_generated_file(profile):
    promtool = require_binary("promtool")
    out = subprocess.run([promtool, "check", "rules", str(ROOT / RULE_FILES[profile])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("profile", sorted(UNIT_TESTS))
def test_promtool_unit_tests_pass(profile):
    promtool = require_binary("promtool")
    out = subprocess.run([promtool, "test", "rules", str(UNIT_TESTS[profile])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _cases(profile: str) -> dict[str, dict[str, int]]:
    """alertname -> {"fires": n, "silent": n} over the profile's promtool test cases."""
    doc = yaml.safe_load(UNIT_TESTS[profile].read_text())
    cases: dict[str, dict[str, int]] = {}
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            kind = "fires" if case.get("exp_alerts") else "silent"
            cases.setdefault(case["alertname"], {"fires": 0, "silent": 0})[kind] += 1
    return cases


def test_every_production_alert_has_a_firing_and_a_silent_unit_test():
    cases = _cases("production")
    for name in _alerts("production"):
        assert cases.get(name, {}).get("fires"), f"{name}: no promtool case where it fires"
        assert cases.get(name, {}).get("silent"), f"{name}: no promtool case where it must not fire"


def test_fast_profile_unit_tests_cover_the_rollback_alerts_both_ways():
    cases = _cases("fast")
    for name in (*ROLLBACK_ALERTS, "OllamaRouteRolledBack"):
        assert cases.get(name, {}).get("fires") and cases.get(name, {}).get("silent"), name


def test_unit_tests_only_name_alerts_that_exist():
    for profile in UNIT_TESTS:
        assert set(_cases(profile)) <= set(_alerts(profile)), profile


def test_both_profiles_define_the_same_rules_so_dashboards_work_with_either():
    names = {p: [r.get("record") or r.get("alert") for r in _rules(p)] for p in RULE_FILES}
    assert names["production"] == names["fast"]


def test_recording_rule_names_follow_level_metric_operations():
    for profile in RULE_FILES:
        for rule in _rules(profile):
            if "record" in rule:
                assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z_0-9]+", rule["record"]), rule["record"]


@pytest.mark.parametrize("profile", sorted(RULE_FILES))
def test_every_alert_says_how_bad_what_and_where_to_look(profile):
    runbook = RUNBOOK.read_text()
    anchors = {_github_anchor(h) for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    for name, rule in _alerts(profile).items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        base, _, anchor = ann["runbook_url"].partition("#")
        assert base == RUNBOOK_BASE and anchor in anchors, f"{name}: no runbook section #{anchor}"
        m = re.fullmatch(r"/d/([\w-]+)(\?.*)?", ann["dashboard_url"])
        assert m and m.group(1) in DEFAULT.dashboard_uids.all, f"{name}: {ann['dashboard_url']}"


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("profile", sorted(RULE_FILES))
def test_only_canary_alerts_ask_the_proxy_to_roll_back(profile):
    alerts = _alerts(profile)
    for name, rule in alerts.items():
        if name in ROLLBACK_ALERTS:
            # The promtool cases check that the firing alert also keeps its `route` label.
            assert rule["labels"]["action"] == "rollback", name
        else:
            assert "action" not in rule["labels"], f"{name} would make the proxy act"


def test_fast_profile_is_evaluated_every_second():
    doc = yaml.safe_load((ROOT / RULE_FILES["fast"]).read_text())
    assert all(g["interval"] == "1s" for g in doc["groups"])
    doc = yaml.safe_load((ROOT / RULE_FILES["production"]).read_text())
    assert all("interval" not in g for g in doc["groups"])  # prometheus.yml decides
