"""Provisioning: Prometheus, Alertmanager and Grafana configs as the stack loads them.

The real promtool/amtool/Alertmanager check them (a config they reject is a stack that
never starts), and the structural tests pin what the rest of the product relies on: job
names the alert rules use, the rollback route the proxy's webhook serves, the datasource
uid the dashboards reference.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml
from pytest_httpserver import HTTPServer

from proxy.commands.children import free_port
from proxy.monitoring import DEFAULT as MONITORING
from tests.binaries import alertmanager_binary, require_binary

REPO = Path(__file__).resolve().parent.parent
PROVISIONING = REPO / "provisioning"
PROMETHEUS_YML = PROVISIONING / "prometheus" / "prometheus.yml"
PROMETHEUS_FAST_YML = PROVISIONING / "prometheus" / "prometheus-fast.yml"
# Every shipped Prometheus config: production (the default) and the fast profile's.
PROMETHEUS_CONFIGS = [PROMETHEUS_YML, PROMETHEUS_FAST_YML]
ALERTMANAGER_YML = PROVISIONING / "alertmanager" / "alertmanager.yml"
DATASOURCE_YML = PROVISIONING / "grafana" / "datasources" / "prometheus.yml"
PROVIDER_YML = PROVISIONING / "grafana" / "dashboard-providers" / "ollama-sidecar.yml"

# The team's fixed facts (BRIEF.md): job names the alert rules select on, and where each
# job finds its targets on the compose network.
EXPECTED_TARGETS = {
    "ollama-exporter": "exporter:9101",
    "prometheus": "localhost:9090",
    "alertmanager": "alertmanager:9093",
}
# The proxy replicas, found by their names in Docker's DNS, on their metrics listener (not
# published). tests/test_compose.py checks these are the compose services and port.
PROXY_JOB = MONITORING.proxy_job
PROXY_REPLICAS = ["proxy-1", "proxy-2"]
PROXY_METRICS_PORT = 9102
# Pinned here as a literal on purpose: the provisioned files and the monitoring config
# (proxy/monitoring.py, which renders dashboards and rules) must both say it.
DATASOURCE_UID = "ollama-sidecar-prometheus"
ADMIN_TOKEN_FILE = "/run/secrets/admin_token"
ROLLBACK_WEBHOOK = "http://proxy:11435/admin/alertmanager"
# The static `host` label of every scrape target (compose: one machine).
HOST = "local"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def rollback_route(config: dict) -> dict:
    [route] = [r for r in config["route"].get("routes", []) if r.get("receiver") == "rollback"]
    return route


def receiver(config: dict, name: str) -> dict:
    [found] = [r for r in config["receivers"] if r["name"] == name]
    return found


def discovery(job: dict) -> dict[str, list]:
    """How the job finds its targets: every ``static_configs`` / ``*_sd_configs`` key."""
    return {k: v for k, v in job.items() if k == "static_configs" or k.endswith("_sd_configs")}


def relabel_constants(job: dict) -> dict[str, str]:
    """Labels the job's relabel_configs set to a constant (no source label)."""
    return {r["target_label"]: r["replacement"] for r in job.get("relabel_configs", [])
            if "source_labels" not in r and r.get("action", "replace") == "replace"}


def target_host(job: dict) -> str | None:
    """The `host` label the job's targets get: static `labels`, or a constant relabel."""
    static = discovery(job).get("static_configs", [{}])[0].get("labels", {})
    return static.get("host") or relabel_constants(job).get("host")


def relabel(rule: dict, labels: dict[str, str]) -> dict[str, str]:
    """One `replace` relabel rule as Prometheus applies it: an anchored regex over the
    source labels joined by `;`, and `${1}`/`$1` in the replacement (Python's `\\g<1>`)."""
    value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("source_labels", []))
    match = re.fullmatch(rule.get("regex", "(.*)"), value)
    if match is None:
        return labels
    replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
    return {**labels, rule["target_label"]: match.expand(replacement)}


def duration_seconds(text: str) -> float:
    """Prometheus-style duration ('5s', '1m30s') in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


# --- Prometheus ------------------------------------------------------------------------


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_promtool_accepts_prometheus_config(config: Path) -> None:
    promtool = require_binary("promtool")
    # Also checks every rule file the rule_files glob matches (once rules are generated).
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout, result.stdout


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_each_job_has_one_discovery_config_with_its_compose_targets(config: Path) -> None:
    """One way to find targets per job, so the demo, the e2e test and the scaled topology
    test can replace it wholesale by job name (proxy/commands/stack.py's point_job_at)."""
    jobs = {job["job_name"]: job for job in load(config)["scrape_configs"]}
    assert set(jobs) == set(EXPECTED_TARGETS) | {PROXY_JOB}
    for name, job in jobs.items():
        found = discovery(job)
        assert len(found) == 1 and len(next(iter(found.values()))) == 1, (name, found)
        if name == PROXY_JOB:
            continue
        assert found["static_configs"][0]["targets"] == [EXPECTED_TARGETS[name]], name


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_every_proxy_replica_is_discovered_by_its_name_in_dns(config: Path) -> None:
    """Both replicas, each by the name of its compose service (A records of Docker's DNS),
    on the metrics port: one name per replica, so `instance` can name the replica."""
    [job] = [j for j in load(config)["scrape_configs"] if j["job_name"] == PROXY_JOB]
    [dns] = discovery(job)["dns_sd_configs"]
    assert dns["names"] == PROXY_REPLICAS
    assert dns["type"] == "A"
    assert dns["port"] == PROXY_METRICS_PORT


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_a_replicas_instance_label_is_its_name_not_its_container_address(config: Path) -> None:
    """Compose gives a recreated container a new address: an `instance` made of it would
    start new series and name no replica in alerts. Targets found otherwise (the demo's
    static ones, the topology test's file) keep their address."""
    [job] = [j for j in load(config)["scrape_configs"] if j["job_name"] == PROXY_JOB]
    for address, dns_name, expected in [("172.18.0.7:9102", "proxy-2", "proxy-2:9102"),
                                        ("127.0.0.1:40123", None, "127.0.0.1:40123")]:
        labels = {"__address__": address, "instance": address, **({"__meta_dns_name": dns_name} if dns_name else {})}
        for rule in job["relabel_configs"]:
            labels = relabel(rule, labels)
        assert labels["instance"] == expected
        assert labels["host"] == HOST


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_every_target_carries_the_static_host_label_of_its_machine(config: Path) -> None:
    """Alertmanager's inhibitions match on `host` (equal: [host]), and the exporter's and
    the proxy's series join on it: one constant label per target (static `labels`, or a
    relabel rule where DNS finds the targets), the same for the proxy and the exporter in
    front of one Ollama (compose runs everything on one machine)."""
    hosts = {job["job_name"]: target_host(job) for job in load(config)["scrape_configs"]}
    assert all(hosts.values()), hosts
    assert hosts[MONITORING.proxy_job] == hosts[MONITORING.exporter_job]
    assert set(hosts.values()) == {HOST}


def test_the_monitoring_config_names_the_jobs_and_datasource_provisioned_here() -> None:
    """Dashboards and rules select on MonitoringConfig's job names and default to its
    datasource uid: the shipped prometheus.yml and datasource must say the same."""
    jobs = {job["job_name"] for job in load(PROMETHEUS_YML)["scrape_configs"]}
    assert {MONITORING.proxy_job, MONITORING.exporter_job} <= jobs
    assert MONITORING.datasource_uid == DATASOURCE_UID


@pytest.mark.parametrize(("config", "rules"), [(PROMETHEUS_YML, "rules/ollama-sidecar.rules.yml"),
                                               (PROMETHEUS_FAST_YML, "rules-fast/ollama-sidecar.rules.yml")],
                         ids=["production", "fast"])
def test_each_config_loads_its_own_profiles_rules_by_a_relative_glob(config: Path, rules: str) -> None:
    # Fixed locations (BRIEF.md), relative to the config: compose mounts the whole
    # directory, so the same relative glob works in the container.
    [pattern] = load(config)["rule_files"]
    assert not pattern.startswith("/")
    assert fnmatch.fnmatch(rules, pattern)
    assert [str(p.relative_to(config.parent)) for p in config.parent.glob(pattern)] == [rules]


@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_alerts_are_sent_to_alertmanager(config: Path) -> None:
    [alertmanagers] = load(config)["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": ["alertmanager:9093"]}]


GENERATED_RULE_FILES = sorted((PROVISIONING / "prometheus").glob("rules*/*.yml"))


@pytest.mark.parametrize("rule_file", GENERATED_RULE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_generated_rules_only_select_jobs_prometheus_scrapes(rule_file: Path) -> None:
    """An `up{job="…"}` on a job nobody scrapes is an alert that can never fire."""
    jobs = {job["job_name"] for job in load(PROMETHEUS_YML)["scrape_configs"]}
    exprs = [rule["expr"] for group in load(rule_file)["groups"] for rule in group["rules"]]
    named = {m for expr in exprs for m in re.findall(r'job\s*=~?\s*"([^"]+)"', expr)}
    assert named <= jobs


# --- Alertmanager ----------------------------------------------------------------------


def test_amtool_accepts_alertmanager_config() -> None:
    # amtool does not open credentials_file at check time (verified with amtool 0.25),
    # so the file is checked as committed, /run/secrets path and all.
    amtool = require_binary("amtool")
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER_YML)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        # Rollback alerts: the proxy's webhook, then (continue: true) people too.
        (["alertname=OllamaCanaryErrorRateHigh", "action=rollback", "route=chat", "severity=critical"],
         "rollback,default"),
        (["alertname=OllamaCanaryLatencyRegression", "action=rollback", "route=embed"], "rollback,default"),
        (["alertname=OllamaGPUHot", "severity=warning"], "default"),
        (["alertname=OllamaRouteRolledBack", "route=chat", "severity=warning"], "default"),
        (["alertname=Custom", "action=page", "route=chat"], "default"),
    ],
)
def test_alertmanager_routes_only_rollback_alerts_to_the_proxy_and_every_alert_to_people(
        labels: list[str], expected: str) -> None:
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}", *labels],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [expected]


def test_rollback_receiver_calls_the_proxy_webhook_with_the_token_and_resolved() -> None:
    config = load(ALERTMANAGER_YML)
    route = rollback_route(config)
    assert route["matchers"] == ['action="rollback"']
    assert route["continue"] is True  # and on to people
    assert duration_seconds(route["group_wait"]) <= 10
    assert config["route"]["group_by"] == ["alertname", "route"]
    [webhook] = receiver(config, "rollback")["webhook_configs"]
    assert webhook["url"] == ROLLBACK_WEBHOOK
    assert webhook["send_resolved"] is True
    assert webhook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": ADMIN_TOKEN_FILE}


def test_people_get_every_alert_through_default_which_ships_with_examples_only() -> None:
    """As shipped, `default` notifies nobody (its examples are comments, see
    tests/test_alertmanager_config.py); compose's receivers-check says so at start-up."""
    config = load(ALERTMANAGER_YML)
    assert config["route"]["receiver"] == "default"
    # After the rollback route, a catch-all route to people (no matchers).
    assert config["route"]["routes"][-1] == {"receiver": "default"}
    assert receiver(config, "default") == {"name": "default"}


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


@pytest.mark.e2e
def test_real_alertmanager_posts_rollback_alerts_with_the_bearer_token(tmp_path: Path, httpserver: HTTPServer) -> None:
    """The committed config, run by a real Alertmanager, reaches the webhook authenticated.

    Only the two deployment paths are rewritten: the proxy URL (to a local receiver) and
    the token file (to a temporary one). Routing, grouping and auth are as committed.
    """
    binary = alertmanager_binary()
    token = "test-token-4f1c"
    (tmp_path / "admin_token").write_text(token + "\n")
    config = load(ALERTMANAGER_YML)
    [webhook] = receiver(config, "rollback")["webhook_configs"]
    webhook["url"] = httpserver.url_for("/admin/alertmanager")
    webhook["http_config"]["authorization"]["credentials_file"] = str(tmp_path / "admin_token")
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    httpserver.expect_request("/admin/alertmanager", method="POST").respond_with_data("ok")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: ready(f"{base}/-/ready") or process.poll() is not None, 20, "Alertmanager ready")
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        alerts = [
            {"labels": {"alertname": "OllamaCanaryErrorRateHigh", "action": "rollback", "route": "chat"}},
            {"labels": {"alertname": "OllamaGPUHot", "severity": "warning"}},
        ]
        requests.post(f"{base}/api/v2/alerts", json=alerts, timeout=5).raise_for_status()
        wait_until(lambda: len(httpserver.log) > 0, 20, "the rollback webhook")
    finally:
        process.terminate()
        process.wait(timeout=10)

    request, _ = httpserver.log[0]
    assert request.headers["Authorization"] == f"Bearer {token}"
    payload = json.loads(request.get_data())
    assert payload["version"] == "4"
    assert payload["receiver"] == "rollback"
    assert [a["labels"]["alertname"] for a in payload["alerts"]] == ["OllamaCanaryErrorRateHigh"]
    assert payload["alerts"][0]["labels"]["route"] == "chat"


# --- Grafana ---------------------------------------------------------------------------


def test_datasource_uid_is_pinned_and_points_at_prometheus() -> None:
    [datasource] = load(DATASOURCE_YML)["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["access"] == "proxy"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True


def test_datasource_time_interval_matches_the_scrape_interval() -> None:
    """A shorter Grafana interval makes $__rate_interval windows hold < 2 samples: gaps."""
    [datasource] = load(DATASOURCE_YML)["datasources"]
    scrape_interval = load(PROMETHEUS_YML)["global"]["scrape_interval"]
    assert duration_seconds(datasource["jsonData"]["timeInterval"]) == duration_seconds(scrape_interval)


def test_dashboard_provider_loads_files_read_only() -> None:
    config = load(PROVIDER_YML)
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert provider["allowUiUpdates"] is False


GENERATED_DASHBOARDS = sorted((PROVISIONING / "grafana" / "dashboards").glob("*.json"))


def datasource_refs(node: object) -> list[dict]:
    """Every `"datasource": {...}` object in a dashboard (panels, targets, variables)."""
    if isinstance(node, list):
        return [ref for item in node for ref in datasource_refs(item)]
    if not isinstance(node, dict):
        return []
    found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
    return found + [ref for value in node.values() for ref in datasource_refs(value)]


@pytest.mark.parametrize("dashboard", GENERATED_DASHBOARDS, ids=lambda p: p.name)
def test_generated_dashboards_use_the_provisioned_datasource_uid(dashboard: Path) -> None:
    """A uid other than the provisioned one renders as "datasource not found"."""
    text = dashboard.read_text()
    refs = [ref for ref in datasource_refs(json.loads(text)) if ref.get("type") == "prometheus"]
    assert refs, "no Prometheus datasource reference"
    assert {ref.get("uid") for ref in refs if not str(ref.get("uid", "")).startswith("$")} <= {DATASOURCE_UID}
    assert DATASOURCE_UID in text
