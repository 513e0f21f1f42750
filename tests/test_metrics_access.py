"""Who may read /metrics, and how on-call finds a user's series when labels are hashed."""

from __future__ import annotations

import subprocess
import sys

import requests
import yaml

from proxy.commands.children import free_port
from tests.conftest import running_proxy, wait_for


def test_a_metrics_token_is_required_when_configured_and_the_data_plane_is_unaffected(tmp_path):
    token = tmp_path / "metrics.token"
    token.write_text("scrape-secret\n")
    settings = {"upstream": "http://127.0.0.1:9", "access_log": False, "metrics": {"token_file": str(token)}}
    with running_proxy(settings) as p:
        assert requests.get(f"{p.url}/metrics", timeout=5).status_code == 401
        wrong = requests.get(f"{p.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=5)
        assert wrong.status_code == 401 and "metrics.token_file" in wrong.json()["error"]
        ok = requests.get(f"{p.url}/metrics", headers={"Authorization": "Bearer scrape-secret"}, timeout=5)
        assert ok.status_code == 200 and "ollama_proxy_build_info" in ok.text
        assert requests.get(f"{p.url}/healthz", timeout=5).status_code == 200


def test_metrics_on_their_own_listener_only(tmp_path):
    port, metrics_port = free_port(), free_port()
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(yaml.safe_dump({"upstream": "http://127.0.0.1:9", "access_log": False,
                                   "listen": f"127.0.0.1:{port}",
                                   "metrics": {"listen": f"127.0.0.1:{metrics_port}"}}))
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "proxy", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        wait_for(up, 20, "the metrics listener")
        main = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert main.status_code == 404 and "metrics.listen" in main.json()["error"]
        other = requests.get(f"http://127.0.0.1:{metrics_port}/api/tags", timeout=5)
        assert other.status_code == 404  # the metrics listener serves nothing else
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_session_label_command_turns_a_known_id_into_its_label(tmp_path):
    settings = {"upstream": "http://127.0.0.1:9", "access_log": False}
    with running_proxy(settings) as p:
        r = subprocess.run([sys.executable, "-m", "proxy.cli", "session-label", "user-42", "--proxy", p.url],
                           capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == p.session_label("user-42") and "user-42" not in r.stdout
        bad = requests.post(f"{p.url}/admin/session-label", json={}, timeout=5)
        assert bad.status_code == 400
