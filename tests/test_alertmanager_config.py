"""The shipped Alertmanager config for people: example receivers that work, one line at
start-up when nobody is paged, and inhibitions that make an outage page once without
ever holding back a rollback.

The examples are comments in provisioning/alertmanager/alertmanager.yml; here they are
uncommented in a copy, checked by amtool, and run by a real Alertmanager that delivers to
a local Slack-compatible endpoint and a local SMTP server. The same Alertmanager shows the
inhibitions at work: during OllamaDown (or OllamaProxyDown) on a host, the error-rate and
time-to-first-token alerts of that host are suppressed, the rollback alerts are not.
"""

from __future__ import annotations

import base64
import re
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from pytest_httpserver import HTTPServer

from alerts.alerting import ROLLBACK_ALERTS
from proxy.commands.children import free_port
from tests.binaries import alertmanager_binary, require_binary
from tests.rule_profiles import (CONFIGS, EXPORTER_JOB, PROXY_JOB, Profile, counter, duration, load_profile,
                                 promtool_test, seconds, selector)
from tests.test_compose import ComposeLoader, check_compose_spec

REPO = Path(__file__).resolve().parent.parent
ALERTMANAGER_YML = REPO / "provisioning" / "alertmanager" / "alertmanager.yml"
COMPOSE_YML = REPO / "compose" / "docker-compose.yml"
RECEIVERS_CHECK = REPO / "compose" / "receivers-check" / "receivers_check.py"
PROXY_WEBHOOK_PATH = "/admin/alertmanager"


def uncomment_examples(text: str) -> str:
    """The config with the `default` receiver's examples switched on, as the comment in it
    tells a user to: remove the leading "# " (lines starting "##" are prose)."""
    lines = text.splitlines(keepends=True)
    start = lines.index("  - name: default\n")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("  - name: "))
    for i in range(start + 1, end):
        lines[i] = re.sub(r"^(\s*)# ", r"\1", lines[i])
    return "".join(lines)


def uncomment_compose_secrets(text: str, names: set[str]) -> str:
    """docker-compose.yml with the example receivers' secrets uncommented where it says."""
    out = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"^(\s*)# (- )?(\w+)(:?)\n$", line)
        if m and m.group(3) in names:
            line = f"{m.group(1)}{m.group(2) or ''}{m.group(3)}{m.group(4)}\n"
        m = re.match(r"^(\s*)#   file: \./secrets/(\w+)\n$", line)
        if m and m.group(2) in names:
            line = f"{m.group(1)}  file: ./secrets/{m.group(2)}\n"
        out.append(line)
    return "".join(out)


def examples() -> dict:
    return yaml.safe_load(uncomment_examples(ALERTMANAGER_YML.read_text()))


def receiver(config: dict, name: str) -> dict:
    [found] = [r for r in config["receivers"] if r["name"] == name]
    return found


def secret_files(node: Any) -> set[str]:
    """Names of the /run/secrets/ files a config reads (credentials_file, *_file)."""
    text = yaml.safe_dump(node)
    return set(re.findall(r"/run/secrets/(\w+)", text))


# --- The example receivers ----------------------------------------------------------------


def test_the_shipped_default_receiver_has_examples_and_notifies_nobody() -> None:
    shipped = yaml.safe_load(ALERTMANAGER_YML.read_text())
    assert receiver(shipped, "default") == {"name": "default"}
    uncommented = receiver(examples(), "default")
    assert set(uncommented) == {"name", "slack_configs", "email_configs"}
    # Uncommenting changes nothing but the default receiver.
    assert {k: v for k, v in examples().items() if k != "receivers"} == \
        {k: v for k, v in shipped.items() if k != "receivers"}
    assert receiver(examples(), "rollback") == receiver(shipped, "rollback")


def test_amtool_accepts_the_config_with_the_examples_uncommented(tmp_path: Path) -> None:
    amtool = require_binary("amtool")
    copy = tmp_path / "alertmanager.yml"
    copy.write_text(uncomment_examples(ALERTMANAGER_YML.read_text()))
    result = subprocess.run([amtool, "check-config", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_secrets_are_files_not_values_and_compose_can_provide_them(tmp_path: Path) -> None:
    """Webhook URLs and SMTP passwords are secrets: the examples read them from files,
    and docker-compose.yml carries the matching secrets, commented, for Alertmanager."""
    default = receiver(examples(), "default")
    [slack] = default["slack_configs"]
    [email] = default["email_configs"]
    assert "api_url" not in slack and "auth_password" not in email
    names = secret_files(default)
    assert names == {"chat_webhook_url", "smtp_password"}

    stack = yaml.load(uncomment_compose_secrets(COMPOSE_YML.read_text(), names), Loader=ComposeLoader)  # noqa: S506
    assert set(stack["services"]["alertmanager"]["secrets"]) == {"admin_token"} | names
    for name in names:
        assert stack["secrets"][name] == {"file": f"./secrets/{name}"}
    edited = tmp_path / "docker-compose.yml"
    edited.write_text(yaml.safe_dump(stack))
    result = check_compose_spec(edited)
    assert result.returncode == 0, result.stdout + result.stderr
    # As shipped they are comments: compose refuses to start while a secret file is missing.
    shipped = yaml.load(COMPOSE_YML.read_text(), Loader=ComposeLoader)  # noqa: S506
    assert not names & set(shipped["secrets"])


# --- One line at start-up: who is paged ---------------------------------------------------


def run_receivers_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RECEIVERS_CHECK), str(path)], capture_output=True, text=True,
                          timeout=30)


def test_receivers_check_warns_in_one_line_when_nobody_is_paged() -> None:
    result = run_receivers_check(ALERTMANAGER_YML)
    assert result.returncode == 0
    assert result.stderr == ""
    [line] = result.stdout.splitlines()
    assert line.startswith("ollama-sidecar: WARNING: no human receiver is configured")
    assert "provisioning/alertmanager/alertmanager.yml" in line and "Notifying humans" in line


def test_receivers_check_names_the_receivers_that_page_people(tmp_path: Path) -> None:
    copy = tmp_path / "alertmanager.yml"
    copy.write_text(uncomment_examples(ALERTMANAGER_YML.read_text()))
    result = run_receivers_check(copy)
    assert result.returncode == 0
    assert result.stdout == "ollama-sidecar: Alertmanager notifies people through: default (slack, email).\n"


@pytest.mark.parametrize("change", ["webhook to the proxy only", "people's receiver not routed", "not YAML",
                                    "missing file"])
def test_receivers_check_is_not_fooled_and_never_fails(tmp_path: Path, change: str) -> None:
    config = examples()
    default = receiver(config, "default")
    if change == "webhook to the proxy only":
        config["receivers"].remove(default)
        config["receivers"].append({"name": "default", "webhook_configs": [{"url": "http://proxy:11435/admin/alertmanager"}]})
    elif change == "people's receiver not routed":
        config["receivers"].remove(default)
        config["receivers"] += [{"name": "default"}, dict(default, name="unused")]
    path = tmp_path / "alertmanager.yml"
    if change == "not YAML":
        path.write_text("route: [\n")
    elif change != "missing file":
        path.write_text(yaml.safe_dump(config))
    result = run_receivers_check(path)
    assert result.returncode == 0
    [line] = result.stdout.splitlines()
    assert line.startswith("ollama-sidecar: WARNING:"), line


# --- Inhibitions ---------------------------------------------------------------------------


def inhibit_rules() -> list[dict]:
    return yaml.safe_load(ALERTMANAGER_YML.read_text())["inhibit_rules"]


def named(matchers: list[str]) -> set[str]:
    """Alert names an `alertname=~"A|B"` (or `alertname="A"`) matcher selects."""
    found = set()
    for matcher in matchers:
        m = re.fullmatch(r'alertname=~?"([\w|]+)"', matcher)
        if m:
            found |= set(m.group(1).split("|"))
    return found


def test_an_outage_inhibits_the_alerts_it_causes_on_the_same_host() -> None:
    [rule] = inhibit_rules()
    assert named(rule["source_matchers"]) == {"OllamaDown", "OllamaProxyDown"}
    assert named(rule["target_matchers"]) == {"OllamaHighErrorRate", "OllamaSlowTimeToFirstToken"}
    assert rule["equal"] == ["host"]
    # Every alert named exists in both generated profiles.
    for name in CONFIGS:
        alerts = {r["alert"] for r in load_profile(name).rules if "alert" in r}
        assert named(rule["source_matchers"]) | named(rule["target_matchers"]) <= alerts, name


def test_no_inhibit_rule_can_ever_mute_a_rollback_alert() -> None:
    """Inhibition mutes every receiver, the proxy's webhook included: the canary would
    keep its traffic. Every rule excludes action="rollback" in its target matchers
    (not only by alert name, so a rollback alert added later is safe too)."""
    for rule in inhibit_rules():
        assert 'action!="rollback"' in rule["target_matchers"], rule
        assert not named(rule["target_matchers"]) & set(ROLLBACK_ALERTS), rule


# What makes each alert of the inhibit rule fire, as series scraped from the shipped targets.
def scenario(profile: Profile, alertname: str) -> tuple[str, list[dict], float]:
    """(job, input series, time the alert must fire by) for ``alertname`` in ``profile``."""
    alert = profile.alert(alertname)
    job = EXPORTER_JOB if alertname == "OllamaDown" else PROXY_JOB
    step = profile.scrape_interval(job)
    windows = [w for _, j, w in profile.range_windows() if j == job]
    by = 2 * max(windows, default=0) + seconds(alert.get("for", "0s")) + 2 * profile.eval_interval() + step
    samples = int(by // step) + 2
    target = profile.target_labels(job)

    def requests_of(arm: str, error_type: str, rate: float) -> dict:
        labels = {**target, "route": "chat", "arm": arm, "error_type": error_type}
        return {"series": selector("ollama_proxy_route_requests_total", labels),
                "values": counter(rate, step, samples)}

    if alertname == "OllamaDown":
        series = [{"series": selector("ollama_up", target), "values": f"0x{samples - 1}"}]
    elif alertname == "OllamaProxyDown":
        series = [{"series": selector("up", target), "values": f"0x{samples - 1}"}]
    elif alertname == "OllamaHighErrorRate":  # half of everything fails on both arms
        series = [requests_of(arm, kind, 1) for arm in ("stable", "canary") for kind in ("none", "upstream_5xx")]
    elif alertname == "OllamaSlowTimeToFirstToken":  # every first token takes 20-60 s
        buckets = {"1": 0, "5": 0, "20": 0, "60": 2, "+Inf": 2}
        series = [requests_of("stable", "none", 2)] + [
            {"series": selector("ollama_proxy_time_to_first_token_seconds_bucket",
                                {**target, "route": "chat", "arm": "stable", "le": le}),
             "values": counter(rate, step, samples)} for le, rate in buckets.items()]
    else:
        raise AssertionError(f"no scenario for {alertname}: add one")
    return job, series, by



@pytest.mark.parametrize("profile_name", sorted(CONFIGS))
@pytest.mark.parametrize("alertname", [
    "OllamaDown",
    "OllamaProxyDown",
    "OllamaHighErrorRate",
    "OllamaSlowTimeToFirstToken",
])
def test_alerts_on_both_sides_of_an_inhibition_carry_the_label_it_matches_on(
        tmp_path: Path, profile_name: str, alertname: str) -> None:
    """`equal: [host]` compares the source's and the target's `host`: both must carry the
    one the shipped scrape config gives their targets (a missing label matches only
    another missing one). promtool runs the generated rules on such series."""
    profile = load_profile(profile_name)
    [rule] = inhibit_rules()
    assert alertname in named(rule["source_matchers"]) | named(rule["target_matchers"])
    job, series, by = scenario(profile, alertname)
    host = profile.target_labels(job)["host"]
    firing = f'count by (alertname, host) (ALERTS{{alertname="{alertname}", alertstate="firing"}})'
    tests = [{"name": f"{profile_name}: {alertname} keeps host", "interval": duration(profile.scrape_interval(job)),
              "input_series": series,
              "promql_expr_test": [{"expr": firing, "eval_time": duration(by),
                                    "exp_samples": [{"labels": f'{{alertname="{alertname}", host="{host}"}}',
                                                     "value": 1}]}]}]
    result = promtool_test(profile, tests, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- A real Alertmanager: inhibition and the examples delivering ---------------------------


class SMTPRecorder(socketserver.ThreadingTCPServer):
    """Just enough SMTP (EHLO, AUTH PLAIN, MAIL, RCPT, DATA) to receive Alertmanager's mail."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SMTPHandler)
        self.messages: list[str] = []
        self.logins: list[str] = []


class SMTPHandler(socketserver.StreamRequestHandler):
    server: SMTPRecorder

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 localhost ESMTP test")
        while line := self.rfile.readline():
            command = line.decode().strip()
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-localhost")
                self.reply("250 AUTH PLAIN")
            elif verb == "AUTH":
                parts = command.split()
                if len(parts) == 2:
                    self.reply("334 ")
                    parts.append(self.rfile.readline().decode().strip())
                self.server.logins.append(base64.b64decode(parts[2]).decode())
                self.reply("235 2.7.0 Authentication successful")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                body = []
                while (data := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    body.append(data.decode(errors="replace"))
                self.server.messages.append("".join(body))
                self.reply("250 2.0.0 Ok: queued")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("250 2.0.0 Ok")


@pytest.fixture
def smtp() -> Iterator[SMTPRecorder]:
    server = SMTPRecorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def posted(httpserver: HTTPServer, path: str) -> list[dict]:
    return [request.get_json() for request, _ in httpserver.log if request.path == path]


def alert(alertname: str, host: str, **labels: str) -> dict:
    return {"labels": {"alertname": alertname, "host": host, **labels},
            "annotations": {"summary": f"{alertname} on {host}", "description": "test"}}


@pytest.mark.e2e
@pytest.mark.parametrize("outage", ["OllamaDown", "OllamaProxyDown"])
def test_real_alertmanager_pages_an_outage_once_and_still_rolls_back(
        tmp_path: Path, httpserver: HTTPServer, smtp: SMTPRecorder, outage: str) -> None:
    """The shipped config with its examples uncommented. Only deployment details change:
    where the webhooks and the SMTP server are, the secret files, no STARTTLS (the local
    SMTP server has none) and 1 s group waits so the test does not wait 30 s."""
    binary = alertmanager_binary()
    secrets = {"admin_token": "token-4f1c", "chat_webhook_url": httpserver.url_for("/slack"),
               "smtp_password": "smtp-secret-9"}
    for name, value in secrets.items():
        (tmp_path / name).write_text(value)  # as documented: printf %s, no newline
    text = uncomment_examples(ALERTMANAGER_YML.read_text()).replace("/run/secrets/", f"{tmp_path}/")
    config = yaml.safe_load(text)
    config["route"]["group_wait"] = "1s"
    for route in config["route"]["routes"]:
        route.pop("group_wait", None)
    [hook] = receiver(config, "rollback")["webhook_configs"]
    hook["url"] = httpserver.url_for(PROXY_WEBHOOK_PATH)
    [email] = receiver(config, "default")["email_configs"]
    email.update(smarthost=f"127.0.0.1:{smtp.server_address[1]}", require_tls=False)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    httpserver.expect_request("/slack", method="POST").respond_with_data("ok")
    httpserver.expect_request(PROXY_WEBHOOK_PATH, method="POST").respond_with_data("ok")

    source = alert(outage, "local", severity="critical")
    muted = [alert("OllamaHighErrorRate", "local", route="chat", severity="critical"),
             alert("OllamaSlowTimeToFirstToken", "local", route="chat", arm="stable", severity="warning")]
    rollbacks = [alert(name, "local", route="chat", arm="canary", action="rollback", severity="critical")
                 for name in ROLLBACK_ALERTS]
    elsewhere = alert("OllamaHighErrorRate", "other", route="embed", severity="critical")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def ready() -> bool:
            try:
                return requests.get(f"{base}/-/ready", timeout=1).ok
            except requests.RequestException:
                return process.poll() is not None
        wait_until(ready, 20, "Alertmanager ready")
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        requests.post(f"{base}/api/v2/alerts", json=[source], timeout=5).raise_for_status()
        wait_until(lambda: len(requests.get(f"{base}/api/v2/alerts", timeout=5).json()) == 1, 10, "the outage")
        requests.post(f"{base}/api/v2/alerts", json=[*muted, *rollbacks, elsewhere], timeout=5).raise_for_status()

        people = {outage, *ROLLBACK_ALERTS, "OllamaHighErrorRate@other"}

        def slack_names() -> set[str]:
            found = set()
            for payload in posted(httpserver, "/slack"):
                for attachment in payload["attachments"]:
                    m = re.search(r"\] (\w+)", attachment["title"])
                    found.add(m.group(1) + ("@other" if "on other" in attachment["text"] else ""))
            return found

        def mailed_names() -> set[str]:
            found = set()
            for message in smtp.messages:
                subject = re.search(r"^Subject: (.*)$", message, re.MULTILINE).group(1)
                for name in re.findall(r"Ollama\w+", subject):
                    found.add(name + ("@other" if " embed" in subject else ""))  # the other host's route
            return found

        wait_until(lambda: len(posted(httpserver, PROXY_WEBHOOK_PATH)) >= len(ROLLBACK_ALERTS)
                   and slack_names() >= people and mailed_names() >= people, 30, "every notification")
        time.sleep(2.5)  # a muted group would have flushed by now (group_wait 1s)
        statuses = {(a["labels"]["alertname"], a["labels"]["host"]): a["status"]
                    for a in requests.get(f"{base}/api/v2/alerts", timeout=5).json()}
    finally:
        process.terminate()
        process.wait(timeout=10)

    # The alerts the outage causes on its host: suppressed, by the outage.
    for a in muted:
        status = statuses[(a["labels"]["alertname"], "local")]
        assert status["state"] == "suppressed" and len(status["inhibitedBy"]) == 1, (a, status)
    # Rollback alerts: never inhibited, delivered to the proxy and to people.
    for name in ROLLBACK_ALERTS:
        status = statuses[(name, "local")]
        assert status["state"] == "active" and status["inhibitedBy"] == [], (name, status)
    assert statuses[("OllamaHighErrorRate", "other")]["state"] == "active"  # another host
    delivered = {a["labels"]["alertname"] for p in posted(httpserver, PROXY_WEBHOOK_PATH) for a in p["alerts"]}
    assert delivered == set(ROLLBACK_ALERTS)
    # People: the outage once, the rollbacks, the other host; nothing it muted.
    assert slack_names() == people
    assert mailed_names() == people
    # The examples' secrets were read from their files.
    assert posted(httpserver, "/slack")  # the URL came from chat_webhook_url
    assert smtp.logins and all(login.endswith("\0smtp-secret-9") for login in smtp.logins)
    titles = [a["title"] for p in posted(httpserver, "/slack") for a in p["attachments"]]
    assert any(t == f"[FIRING] {ROLLBACK_ALERTS[0]} (route chat)" for t in titles), titles
