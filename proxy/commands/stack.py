"""The whole closed loop on one machine: simulator, proxy, exporter, Prometheus, Alertmanager.

Used by ``ollama-sidecar demo`` and by the end-to-end tests, so what a newcomer watches is
exactly what CI proves. Every component is a real process on a loopback port chosen at
run time (the usual port when it is free, so the demo's URLs are the familiar ones).
Prometheus and Alertmanager run with the configs the project ships
(``provisioning/``), rendered for these ports, with the fast rule profile and a 1 s
scrape and evaluation interval. The exporter reads simulated GPUs (``--fake-gpus``), so
the GPU panels have something to show on a machine without one. Every process is a
:class:`~proxy.commands.children.Child`: its own process group, stopped as a group, and
sent SIGTERM by the kernel if the stack's own process dies, so nothing outlives the stack.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from proxy.commands.children import Child, free_port
from proxy.monitoring import DEFAULT as MONITORING

REPO_ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = REPO_ROOT / "provisioning"
STABLE_MODEL = "qwen3:8b"
CANARY_MODEL = "qwen3:8b-ft"
ROUTE = "chat"


# The demo's tenants: name -> (API key, limits). The traffic driver sends their keys.
DEMO_TENANTS: dict[str, tuple[str, dict[str, int]]] = {
    "support-bot": ("sk-demo-support-bot", {"requests_per_minute": 100_000, "concurrent": 64}),
    "analytics": ("sk-demo-analytics", {"tokens_per_day": 1_000_000_000}),
}
DEMO_KEYS = tuple(key for key, _ in DEMO_TENANTS.values())


def replace_discovery(job: dict[str, Any], kind: str, configs: list[dict[str, Any]]) -> None:
    """Make ``configs`` (of ``kind``: ``static_configs``, ``file_sd_configs`` …) the only way
    a scrape job of the shipped Prometheus config finds its targets. The shipped jobs find
    theirs in different ways (static targets; DNS for the proxy replicas), so a job is
    re-pointed by replacing its discovery wholesale, never by editing one field of it; its
    relabel_configs (the proxy's `host` label) stay and apply to the new targets."""
    for key in [k for k in job if k == "static_configs" or k.endswith("_sd_configs")]:
        del job[key]
    job[kind] = configs


def point_job_at(job: dict[str, Any], targets: list[str]) -> None:
    """Scrape ``targets`` for this shipped job, with the static labels (``host``) the shipped
    config gives its targets: alerts and inhibitions match on them."""
    labels = {k: v for static in job.get("static_configs", []) for k, v in static.get("labels", {}).items()}
    replace_discovery(job, "static_configs", [{"targets": targets, **({"labels": labels} if labels else {})}])


def find_alertmanager() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def monitoring_available() -> bool:
    """Prometheus and Alertmanager installed, and the shipped configs at hand (they live in
    the repository's provisioning/, not in an installed wheel)."""
    return bool(shutil.which("prometheus") and find_alertmanager() and (PROVISIONING / "prometheus").is_dir())


@dataclass
class StackOptions:
    workdir: Path
    canary_weight: float = 50.0
    breaker: dict[str, Any] | None = None  # route breaker settings; None: off
    monitoring: bool = True  # Prometheus + Alertmanager
    webhook_reachable: bool = True  # False: Alertmanager's webhook points at a dead port
    reconcile_interval: float | None = None  # set: the proxy polls Alertmanager's API
    reconcile_grace: float = 2.0  # how long reconcile leaves a new alert to its webhook
    preferred_ports: bool = False  # try 11434/11435/9101/9090/9093 first (the demo)
    fake_gpus: int = 2  # simulated GPUs the exporter reads; 0: none (--no-nvml)
    rollout: dict[str, Any] | None = None  # the route's rollout definition (the rollout scenarios)
    rollout_on_prometheus: bool = False  # the rollout analyses on this stack's Prometheus (every replica's counts)
    servers: int = 1  # simulated Ollama servers behind the proxy (2: the failover story)
    profiles: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        STABLE_MODEL: {"ttft_seconds": 0.05, "tokens_per_second": 60, "output_tokens": 12,
                       "cold_load_seconds": 0.3, "keep_alive_seconds": -1},
        CANARY_MODEL: {"ttft_seconds": 0.05, "tokens_per_second": 70, "output_tokens": 12,
                       "cold_load_seconds": 0.3, "keep_alive_seconds": -1},
    })


class LocalStack:
    """Start with :meth:`start`, always :meth:`stop` (or use it as a context manager)."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.dir = options.workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        pref = options.preferred_ports
        self.simulators = ["simulator"] + [f"simulator{i}" for i in range(2, options.servers + 1)]
        self.ports = {name: free_port(default if pref else None) for name, default in
                      (("simulator", 11434), ("proxy", 11435), ("exporter", 9101), ("prometheus", 9090),
                       ("alertmanager", 9093))}
        self.ports.update({name: free_port() for name in self.simulators[1:]})
        self.token = secrets.token_urlsafe(24)
        self.token_file = self.dir / "admin_token"
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)
        self.state_file = self.dir / "proxy-state.json"
        self.processes: dict[str, Child] = {}
        self.monitoring = options.monitoring and monitoring_available()

    # --- URLs --------------------------------------------------------------------------------
    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    # --- configs -----------------------------------------------------------------------------
    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "proxy.cli", *args]

    def _write_yaml(self, name: str, data: Any) -> Path:
        path = self.dir / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def proxy_config(self) -> dict[str, Any]:
        route: dict[str, Any] = {"stable": STABLE_MODEL, "canary": CANARY_MODEL,
                                 "canary_weight": self.options.canary_weight}
        if self.options.breaker:
            route["breaker"] = self.options.breaker
        if self.options.rollout:
            route["rollout"] = dict(self.options.rollout)
            if self.options.rollout_on_prometheus and self.monitoring:
                route["rollout"]["analysis"] = {"prometheus": self.url("prometheus")}
        config: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.ports['proxy']}",
            # A named fleet (of one, or two in the failover story): the proxy discovers where
            # each model is loaded, which the GPUs dashboard's fleet row shows.
            "upstreams": {name: {"url": self.url(name), "parallel": 4} for name in self.simulators},
            "discovery_interval": 1, "health_interval": 1,
            "state_file": str(self.state_file), "admin": {"token_file": str(self.token_file)},
            "routes": {ROUTE: route}, "access_log": False,
            # A demo stops (or restarts its proxy) within its stop wait, streams or not.
            "timeouts": {"shutdown": 5},
            "rollout_tick": 0.5,
            # Short, so that sessions expire (and their duration shows) within a demo; the
            # traffic's regular users come back every few seconds, its visitors never.
            "session_active_window": 4,
            # Two teams share the box: the Tenants dashboard and `usage` have someone to show.
            # Limits generous enough never to refuse the demo's own traffic.
            "auth": {"tenants": {name: {"keys": [key], "limits": limits}
                                 for name, (key, limits) in DEMO_TENANTS.items()}},
        }
        if self.options.reconcile_interval is not None and self.monitoring:
            config["alertmanager_url"] = self.url("alertmanager")
            config["reconcile_interval"] = self.options.reconcile_interval
            config["reconcile_grace"] = self.options.reconcile_grace
        return config

    def prometheus_config(self) -> dict[str, Any]:
        shipped = yaml.safe_load((PROVISIONING / "prometheus" / "prometheus.yml").read_text())
        shipped["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
        rules = self.dir / "rules"
        shutil.rmtree(rules, ignore_errors=True)
        shutil.copytree(PROVISIONING / "prometheus" / "rules-fast", rules)
        shipped["rule_files"] = [str(rules / "*.yml")]
        shipped["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
            f"127.0.0.1:{self.ports['alertmanager']}"]
        # The shipped jobs, named as the dashboards and rules select them.
        targets = {MONITORING.proxy_job: "proxy", MONITORING.exporter_job: "exporter",
                   "prometheus": "prometheus", "alertmanager": "alertmanager"}
        for job in shipped["scrape_configs"]:
            point_job_at(job, [f"127.0.0.1:{self.ports[targets[job['job_name']]]}"])
        return shipped

    def alertmanager_config(self) -> dict[str, Any]:
        shipped = yaml.safe_load((PROVISIONING / "alertmanager" / "alertmanager.yml").read_text())
        rollback_route = next(r for r in shipped["route"]["routes"] if r["receiver"] == "rollback")
        rollback_route.update({"group_wait": "1s", "group_interval": "2s"})
        hook_port = self.ports["proxy"] if self.options.webhook_reachable else free_port()
        for receiver in shipped["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = f"http://127.0.0.1:{hook_port}/admin/alertmanager"
                hook["http_config"]["authorization"]["credentials_file"] = str(self.token_file)
        return shipped

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "LocalStack":
        profiles = self._write_yaml("profiles.yaml", {"models": self.options.profiles})
        for i, name in enumerate(self.simulators, start=1):
            self._spawn(name, self._cli("simulate", "--listen", f"127.0.0.1:{self.ports[name]}",
                                        "--profiles", str(profiles), "--seed", str(i)),
                        f"{self.url(name)}/api/version")
        self._start_proxy()
        gpus = ["--fake-gpus", str(self.options.fake_gpus)] if self.options.fake_gpus else ["--no-nvml"]
        self._spawn("exporter", self._cli("exporter", "--listen", f"127.0.0.1:{self.ports['exporter']}",
                                           "--ollama", self.url("simulator"), *gpus),
                    f"{self.url('exporter')}/metrics")
        if self.monitoring:
            am_config = self._write_yaml("alertmanager.yml", self.alertmanager_config())
            self._spawn("alertmanager", [find_alertmanager() or "alertmanager", f"--config.file={am_config}",
                                         f"--storage.path={self.dir / 'am-data'}",
                                         f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']}",
                                         "--cluster.listen-address=", "--log.level=warn"],
                        f"{self.url('alertmanager')}/-/ready")
            prom_config = self._write_yaml("prometheus.yml", self.prometheus_config())
            self._spawn("prometheus", [shutil.which("prometheus") or "prometheus", f"--config.file={prom_config}",
                                       f"--storage.tsdb.path={self.dir / 'prom-data'}",
                                       f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}",
                                       "--log.level=warn"],
                        f"{self.url('prometheus')}/-/ready")
        return self

    def _start_proxy(self) -> None:
        config = self._write_yaml("proxy.yaml", self.proxy_config())
        # Flags, not only the file: they beat an OLLAMA_SIDECAR_LISTEN or _UPSTREAM exported
        # in the shell that runs the demo.
        self._spawn("proxy", self._cli("proxy", "--config", str(config), "--listen", f"127.0.0.1:{self.ports['proxy']}",
                                       "--log-level", "warning"),
                    f"{self.url('proxy')}/healthz")

    def restart_proxy(self) -> None:
        self.processes.pop("proxy").stop()
        self._start_proxy()

    def _spawn(self, name: str, argv: list[str], ready_url: str, timeout: float = 30.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = Child(name, argv, self.dir / f"{name}.log", env)
        self.processes[name] = process
        process.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process.alive():
                raise RuntimeError(f"{name} exited at start:\n{process.log_tail()}")
            try:
                if requests.get(ready_url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready within {timeout:g}s:\n{process.log_tail()}")

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        self.processes.clear()

    def __enter__(self) -> "LocalStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the loop looks like ------------------------------------------------------------
    def route_state(self) -> dict[str, Any]:
        return requests.get(f"{self.url('proxy')}/admin/routes/{ROUTE}", headers=self.admin_headers,
                            timeout=5).json()

    def rollout(self, action: str = "", body: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET the route's rollout, or POST an action ("" starts one)."""
        url = f"{self.url('proxy')}/admin/routes/{ROUTE}/rollout" + (f"/{action}" if action else "")
        if body is None and not action:
            resp = requests.get(url, headers=self.admin_headers, timeout=5)
        else:
            resp = requests.post(url, json=body or {}, headers=self.admin_headers, timeout=60)
        resp.raise_for_status()
        return resp.json()

    def set_canary_profile(self, **fields: Any) -> None:
        """Change the canary's simulated profile on every server (e.g. answer_quality)."""
        self.break_canary(**fields)

    def break_canary(self, **fields: Any) -> None:
        for name in self.simulators:  # wherever the canary is served
            resp = requests.patch(f"{self.url(name)}/_simulator/models/{CANARY_MODEL}",
                                  data=json.dumps(fields), timeout=5)
            resp.raise_for_status()

    def firing_alerts(self) -> list[str]:
        if not self.monitoring:
            return []
        try:
            doc = requests.get(f"{self.url('prometheus')}/api/v1/alerts", timeout=2).json()
        except (requests.RequestException, ValueError):
            return []
        return sorted({a["labels"]["alertname"] for a in doc.get("data", {}).get("alerts", [])
                       if a.get("state") == "firing"})
