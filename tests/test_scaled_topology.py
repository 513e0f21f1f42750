"""The compose stack's scaled topology, as real processes on this machine (issue 13).

nginx from Debian runs the shipped ``compose/lb/nginx.conf`` (only its listen address, its
list of replicas and its paths rendered for here; every routing rule as shipped) in front
of three ``ollama-sidecar proxy`` processes configured from ``compose/proxy/proxy.yaml``
(addresses rendered, ``state:`` pointing at a real ``redis-server``), in front of the
Ollama simulator. A real Prometheus scrapes the replicas with the shipped job, its DNS
discovery replaced by a file listing them. What a user of the stack would notice:

(a) a session (X-Session-ID, else X-User-ID) always lands on the same replica, and
    sessions spread over several;
(b) a route change made through any replica's admin API is seen by all three within 1 s
    (the only deadline asserted: the issue's);
(c) Prometheus scrapes all three and exactly one holds the rollout lease;
(d) a streamed reply arrives whole through nginx.

nginx, redis-server and prometheus are real binaries: under CI=true a missing one fails
the test (tests/binaries.py), locally it skips with the command that installs it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.commands.children import Child, free_port
from proxy.commands.stack import replace_discovery
from proxy.monitoring import DEFAULT as MONITORING
from tests.binaries import require_binary
from tests.conftest import wait_for
from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
LB_CONFIG = REPO / "compose" / "lb" / "nginx.conf"
PROXY_CONFIG = REPO / "compose" / "proxy" / "proxy.yaml"
PROMETHEUS_CONFIG = REPO / "provisioning" / "prometheus" / "prometheus-fast.yml"
REPLICAS = 3
ROUTE = "chat"
API_KEY = "topology-api-key"
ADMIN_TOKEN = "topology-admin-token"
# Generous start-up waits; only the convergence of a change has a deadline of its own.
START_TIMEOUT = 30.0
CONVERGENCE = 1.0
NGINX_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str:
    """Debian puts nginx in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    return found or require_binary("nginx")


# --- the shipped configs, rendered for loopback ports ------------------------------------------


def render_lb_config(shipped: str, listen_port: int, servers: list[str], workdir: Path) -> str:
    """compose/lb/nginx.conf for this machine: the listen address, the servers between the
    replicas markers (addresses instead of the compose names that need Docker's DNS and
    nginx >= 1.27.3's `resolve`) and the temp paths (Debian's default, /var/lib/nginx,
    belongs to root). The maps, the hash and every proxy_* setting stay as shipped."""
    lines = "".join(f"        server {server};\n" for server in servers)
    text, found = re.subn(r"(?<=# replicas:begin\n).*?(?=[ \t]*# replicas:end)", lambda _: lines, shipped,
                          flags=re.DOTALL)
    assert found == 1, "compose/lb/nginx.conf lost its replicas:begin/end markers"
    text, found = re.subn(r"^(\s*)listen\s+\d+;", rf"\g<1>listen 127.0.0.1:{listen_port};", text, flags=re.MULTILINE)
    assert found == 1, "compose/lb/nginx.conf should listen on one port"
    temp = "".join(f"    {kind}_temp_path {workdir / kind};\n" for kind in NGINX_TEMP_PATHS)
    text, found = re.subn(r"^http \{\n", lambda m: m.group(0) + temp, text, flags=re.MULTILINE)
    assert found == 1
    return text


def render_proxy_config(ports: dict[str, int], simulator_url: str, redis_url: str, workdir: Path) -> dict[str, Any]:
    """compose/proxy/proxy.yaml with this machine's addresses and a journal per replica."""
    config = yaml.safe_load(PROXY_CONFIG.read_text())
    config.pop("alertmanager_url")  # no Alertmanager here: reconcile would only log failures
    config.update(listen=f"127.0.0.1:{ports['api']}", upstream=simulator_url, access_log=False,
                  metrics={"listen": f"127.0.0.1:{ports['metrics']}"}, auth={"api_keys": [API_KEY]})
    config["state"].update(url=redis_url, journal=str(workdir / "journal.jsonl"),
                           import_from=str(workdir / "single-proxy" / "state.json"))
    return config


def render_prometheus_config(targets_file: Path) -> dict[str, Any]:
    """The shipped (fast profile) proxy job, its DNS discovery replaced by a file, so its
    relabel rules (the `host` label) are what a real Prometheus applies here."""
    shipped = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = [j for j in shipped["scrape_configs"] if j["job_name"] == MONITORING.proxy_job]
    replace_discovery(job, "file_sd_configs", [{"files": [str(targets_file)], "refresh_interval": "1s"}])
    return {"global": shipped["global"], "scrape_configs": [job]}


# --- the processes -------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    url: str
    metrics_url: str
    child: Child

    def requests_served(self) -> float:
        """Every request this replica answered (its ollama_proxy_requests_total, all series)."""
        text = requests.get(self.metrics_url, timeout=5).text
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples if sample.name == "ollama_proxy_requests_total")

    def route(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/admin/routes/{ROUTE}", headers=admin_headers(), timeout=5).json()


@dataclass
class Topology:
    workdir: Path
    lb_url: str = ""
    prometheus_url: str = ""
    replicas: list[Replica] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self.workdir / f"{name}.log", env=env).start()
        self.children.append(child)
        return child

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop(term_wait=5)

    def served(self) -> dict[str, float]:
        return {r.name: r.requests_served() for r in self.replicas}


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def api_headers(**sticky: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}", **sticky}


def answers(url: str, child: Child) -> bool:
    assert child.alive(), f"{child.name} exited:\n{child.log_tail()}"
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def proxy_env() -> dict[str, str]:
    """The environment compose gives every replica: one admin token and one session key
    (secrets there); nothing of this shell's own OLLAMA_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_SIDECAR_", "OLLAMA_HOST"))}
    return {**env, "OLLAMA_SIDECAR_ADMIN_TOKEN": ADMIN_TOKEN, "OLLAMA_SIDECAR_SESSION_KEY": secrets.token_hex(32)}


def start_simulator(top: Topology) -> str:
    """The Ollama simulator with the two models of the shipped route, answering quickly."""
    routes = yaml.safe_load(PROXY_CONFIG.read_text())["routes"]
    fast = {"ttft_seconds": 0.005, "tokens_per_second": 2000, "output_tokens": 8, "cold_load_seconds": 0,
            "keep_alive_seconds": -1}
    models = {arm[key]: fast for arm in routes.values() for key in ("stable", "canary")}
    profiles = top.workdir / "profiles.yaml"
    profiles.write_text(yaml.safe_dump({"models": models}))
    listen = f"127.0.0.1:{free_port()}"
    # Stream lines split and packed the way TCP delivers them (the simulator's default):
    # whole lines out of nginx are then the proxy's and nginx's doing, not the upstream's.
    child = top.spawn("simulator", [sys.executable, "-m", "proxy.cli", "simulate", "--listen", listen,
                                    "--profiles", str(profiles), "--seed", "13"])
    wait_for(lambda: answers(f"http://{listen}/api/version", child), START_TIMEOUT, "the simulator")
    return f"http://{listen}"


def start_replicas(top: Topology, simulator_url: str, redis_url: str) -> None:
    env = proxy_env()
    for i in range(1, REPLICAS + 1):
        name = f"proxy-{i}"
        workdir = top.workdir / name
        workdir.mkdir()
        ports = {"api": free_port(), "metrics": free_port()}
        config = workdir / "proxy.yaml"
        config.write_text(yaml.safe_dump(render_proxy_config(ports, simulator_url, redis_url, workdir)))
        child = top.spawn(name, [sys.executable, "-m", "proxy.cli", "proxy", "--config", str(config),
                                 "--log-level", "warning"], env=env)
        top.replicas.append(Replica(name, f"http://127.0.0.1:{ports['api']}",
                                    f"http://127.0.0.1:{ports['metrics']}/metrics", child))
    for r in top.replicas:
        wait_for(lambda: answers(f"{r.url}/healthz", r.child), START_TIMEOUT, f"{r.name} to answer")
        wait_for(lambda: requests.get(f"{r.url}/admin/routes", headers=admin_headers(), timeout=5)
                 .json()["state"]["up"], START_TIMEOUT, f"{r.name} to join Redis")


def start_lb(top: Topology) -> None:
    binary = nginx_binary()
    lb = top.workdir / "lb"
    lb.mkdir()
    port = free_port()
    servers = [r.url.removeprefix("http://") for r in top.replicas]
    config = lb / "nginx.conf"
    config.write_text(render_lb_config(LB_CONFIG.read_text(), port, servers, lb))
    child = top.spawn("nginx", [binary, "-p", str(lb), "-c", str(config), "-e", str(lb / "error.log"),
                                "-g", f"pid {lb / 'nginx.pid'}; daemon off;"])
    top.lb_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{top.lb_url}/healthz", child), START_TIMEOUT, "nginx")


def start_prometheus(top: Topology) -> None:
    binary = require_binary("prometheus")
    prom = top.workdir / "prometheus"
    prom.mkdir()
    targets = prom / "proxies.json"
    targets.write_text(json.dumps([{"targets": [r.metrics_url.removeprefix("http://").removesuffix("/metrics")
                                                for r in top.replicas]}]))
    config = prom / "prometheus.yml"
    config.write_text(yaml.safe_dump(render_prometheus_config(targets)))
    port = free_port()
    child = top.spawn("prometheus", [binary, f"--config.file={config}", f"--storage.tsdb.path={prom / 'data'}",
                                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"])
    top.prometheus_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(f"{top.prometheus_url}/-/ready", child), START_TIMEOUT, "Prometheus")


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    # Every binary first: a missing one fails (CI) or skips before anything starts.
    nginx_binary()
    require_binary("prometheus")
    workdir = tmp_path_factory.mktemp("topology")
    redis = RedisServer(workdir / "redis")
    top = Topology(workdir)
    try:
        redis.start()
        start_replicas(top, start_simulator(top), redis.url)
        start_lb(top)
        start_prometheus(top)
        yield top
    finally:
        top.stop()
        redis.stop()


# --- what a user notices -----------------------------------------------------------------------


def chat(lb_url: str, headers: dict[str, str], stream: bool = False) -> requests.Response:
    return requests.post(f"{lb_url}/api/chat", headers=headers, stream=stream, timeout=30,
                         json={"model": ROUTE, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})


def replica_serving(top: Topology, headers: dict[str, str], turns: int = 3) -> str:
    """The one replica that answered ``turns`` requests sent with ``headers`` through nginx."""
    before = top.served()
    for _ in range(turns):
        reply = chat(top.lb_url, headers)
        assert reply.status_code == 200, reply.text
    # A request is counted as its reply ends: wait until all of them are.
    def counted() -> dict[str, float] | None:
        served = top.served()
        return served if sum(served.values()) - sum(before.values()) >= turns else None

    after = wait_for(counted, 10, f"{turns} requests counted")
    grew = {name: after[name] - before[name] for name in after if after[name] > before[name]}
    assert len(grew) == 1 and sum(grew.values()) == turns, f"{headers}: one session spread over {grew}"
    return next(iter(grew))


def test_a_session_stays_on_one_replica_and_sessions_spread_over_several(topology: Topology) -> None:
    by_session = {f"session-{i}": replica_serving(topology, api_headers(**{"X-Session-ID": f"session-{i}"}))
                  for i in range(16)}
    # Without a session id the user id keeps the requests together, and the session id
    # wins over it: the same session with another user goes where the session went.
    by_user = {f"user-{i}": replica_serving(topology, api_headers(**{"X-User-ID": f"user-{i}"})) for i in range(4)}
    assert replica_serving(topology, api_headers(**{"X-Session-ID": "session-0", "X-User-ID": "user-x"})) \
        == by_session["session-0"]
    used = set(by_session.values()) | set(by_user.values())
    assert len(used) > 1, f"every session landed on {used}"
    # Authorization passed through to the replica: without the key the replica refuses.
    assert chat(topology.lb_url, {"X-Session-ID": "session-0"}).status_code == 401


def test_a_route_change_through_any_replica_is_seen_by_all_within_a_second(topology: Topology) -> None:
    # Each replica's own admin API, then nginx (the way the `ollama-sidecar` CLI comes in).
    ways_in = [(r.name, r.url) for r in topology.replicas] + [("nginx", topology.lb_url)]
    for weight, (name, url) in zip((30, 70, 15, 10), ways_in):
        reply = requests.put(f"{url}/admin/routes/{ROUTE}", json={"canary_weight": weight},
                             headers=admin_headers(), timeout=5)
        assert reply.status_code == 200, f"{name}: {reply.status_code} {reply.text}"
        wait_for(lambda: all(r.route()["weight"] == weight for r in topology.replicas), CONVERGENCE,
                 f"every replica to show weight {weight} (set through {name}) within 1 s")


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    reply = requests.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def query_until(prometheus_url: str, expr: str, good: Callable[[list[dict[str, Any]]], bool]
                ) -> list[dict[str, Any]] | None:
    """The query's result when ``good`` says so, else None (for wait_for)."""
    result = query(prometheus_url, expr)
    return result if good(result) else None


def test_prometheus_scrapes_every_replica_and_exactly_one_leads(topology: Topology) -> None:
    job = MONITORING.proxy_job
    up = wait_for(lambda: query_until(topology.prometheus_url, f'up{{job="{job}"}} == 1', lambda r: len(r) == REPLICAS),
                  START_TIMEOUT, f"{REPLICAS} replicas up in Prometheus")
    assert {s["metric"]["instance"] for s in up} == \
        {r.metrics_url.removeprefix("http://").removesuffix("/metrics") for r in topology.replicas}
    # The shipped relabel rules ran: the `host` label alerts and inhibitions match on.
    assert {s["metric"].get("host") for s in up} == {"local"}
    # Exactly one: a replica takes the free lease at once, and no other while it holds it.
    wait_for(lambda: query_until(topology.prometheus_url, f'sum(ollama_proxy_replica_leader{{job="{job}"}})',
                                 lambda r: bool(r) and float(r[0]["value"][1]) == 1),
             START_TIMEOUT, "exactly one leader in Prometheus")
    backends = query(topology.prometheus_url, f'ollama_proxy_state_backend_up{{job="{job}"}} == 1')
    assert len(backends) == REPLICAS


def test_a_streamed_reply_arrives_whole_through_nginx(topology: Topology) -> None:
    with chat(topology.lb_url, api_headers(**{"X-Session-ID": "streaming"}), stream=True) as reply:
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert len(lines) > 2, lines
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert "".join(line["message"]["content"] for line in lines[:-1]).strip()
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] > 0
