"""The docker compose stack, checked without Docker.

Docker is not available where the suite runs, so the compose files are validated against
the Compose specification (check-jsonschema's vendored `vendor.compose-spec`) and their
wiring is checked structurally: every URL, port, mount and secret one service expects
must be what another service or config file provides. The secrets script runs for real,
and tests/test_scaled_topology.py runs the same topology as processes (nginx with
compose/lb/nginx.conf, proxy replicas sharing a Redis, Prometheus).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from alerts.render import RULE_FILES
from tests.rule_profiles import CONFIGS

REPO = Path(__file__).resolve().parent.parent
COMPOSE_DIR = REPO / "compose"
MAIN = COMPOSE_DIR / "docker-compose.yml"
CPU = COMPOSE_DIR / "docker-compose.cpu.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROXY_CONFIG = COMPOSE_DIR / "proxy" / "proxy.yaml"
LB_CONFIG = COMPOSE_DIR / "lb" / "nginx.conf"
PROVISIONING = REPO / "provisioning"
# Selects the Prometheus config, and with it the rule profile (compose's only variable
# besides OLLAMA_SIDECAR_BIND).
PROFILE_VARIABLE = "OLLAMA_SIDECAR_PROMETHEUS_CONFIG"

# The proxy runs as two replicas that share their state through Redis, behind nginx (lb).
PROXY_REPLICAS = ("proxy-1", "proxy-2")
SERVICES = {"ollama", *PROXY_REPLICAS, "redis", "lb", "exporter", "prometheus", "alertmanager", "grafana",
            "receivers-check"}
# Run once at start-up and exit; no health check, never restarted.
ONE_SHOT = {"receivers-check"}
PUBLISHED = {"lb", "grafana"}
GPU_SERVICES = {"ollama", "exporter"}
# Ports the upstream images listen on (not configurable from this repo).
IMAGE_PORTS = {"ollama": 11434, "prometheus": 9090, "alertmanager": 9093, "grafana": 3000, "redis": 6379}
# The proxy's defaults the LB must match or outwait (proxy/config.py).
PROXY_MAX_BODY_BYTES = 32 * 1024 * 1024
INTERPOLATION = re.compile(r"\$\{(\w+):-([^}]*)\}")


class Reset:
    """Compose's `!reset` tag: drop this key from what earlier files defined."""


class ComposeLoader(yaml.SafeLoader):
    """Safe YAML plus `!reset`, which check-jsonschema's parser (ruamel) cannot read."""


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass


def strip_resets(node: object) -> object:
    """The file as Compose validates it: reset keys are removed before the schema check."""
    if isinstance(node, dict):
        return {k: strip_resets(v) for k, v in node.items() if not isinstance(v, Reset)}
    return node


def merge(base: object, override: object) -> object:
    """Compose's merge for what our override uses: mappings merge, `!reset` deletes."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def interpolate(text: str) -> str:
    """`${VAR:-default}` → default: what compose uses when VAR is unset."""
    return INTERPOLATION.sub(lambda m: m.group(2), text)


def check_compose_spec(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def main() -> dict:
    return load_compose(MAIN)


@pytest.fixture(scope="module")
def cpu_merged(main: dict) -> dict:
    return merge(main, load_compose(CPU))


def gpu_devices(service: dict) -> list[dict]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if "gpu" in d.get("capabilities", [])]


def command_option(service: dict, option: str) -> str:
    command = service["command"]
    return command[command.index(option) + 1]


def listen_port(name: str, service: dict) -> int:
    if name in IMAGE_PORTS:
        return IMAGE_PORTS[name]
    if name == "lb":
        [port] = re.findall(r"^\s*listen\s+(\d+);", LB_CONFIG.read_text(), re.MULTILINE)
        return int(port)
    return int(command_option(service, "--listen").rsplit(":", 1)[1])


def service_answering(stack: dict, host: str) -> str:
    """The compose service a name on the compose network reaches: its own, or an alias."""
    if host in stack["services"]:
        return host
    [name] = [name for name, service in stack["services"].items()
              if host in (service.get("networks") or {}).get("default", {}).get("aliases", [])]
    return name


def mounts(service: dict) -> dict[str, str]:
    """Container path → source (host path made absolute, or the volume name)."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = interpolate(entry).split(":")[:2]
        if source.startswith("."):
            source = str((COMPOSE_DIR / source).resolve())
        found[target] = source
    return found


def host_path(service: dict, container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through its bind mounts."""
    for target, source in sorted(mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            assert source.startswith("/"), f"{container_path} is on volume {source}"
            return Path(source) / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not mounted")


def with_variable(text: str, name: str, value: str) -> str:
    """`text` as compose reads it with ${name} set to value (others at their defaults)."""
    return interpolate(re.sub(r"\$\{" + name + r":-[^}]*\}", value, text))


def bind_mounts(stack: dict) -> list[tuple[str, str, Path]]:
    """(service, container path, host path) of every bind mount in the stack."""
    return [(name, target, Path(source))
            for name, service in stack["services"].items()
            for target, source in mounts(service).items() if source.startswith("/")]


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def rollback_webhook() -> dict:
    [webhook] = [
        w
        for r in load_yaml(PROVISIONING / "alertmanager" / "alertmanager.yml")["receivers"]
        for w in r.get("webhook_configs", [])
    ]
    return webhook


# --- Compose specification -------------------------------------------------------------


def test_main_file_validates_against_the_compose_spec() -> None:
    result = check_compose_spec(MAIN)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_override_and_merged_stack_validate_against_the_compose_spec(tmp_path: Path, cpu_merged: dict) -> None:
    # check-jsonschema cannot parse `!reset`; Compose removes reset keys before it
    # validates, so the override is checked in that form, and the merged model too.
    override = tmp_path / "docker-compose.cpu.yml"
    override.write_text(yaml.safe_dump(strip_resets(load_compose(CPU))))
    merged = tmp_path / "merged.yml"
    merged.write_text(yaml.safe_dump(cpu_merged))
    for path in (override, merged):
        result = check_compose_spec(path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_spec_check_rejects_a_misspelt_key(tmp_path: Path, main: dict) -> None:
    """Guards the check above: the vendored schema must really reject unknown keys."""
    broken = tmp_path / "broken.yml"
    stack = copy.deepcopy(main)
    stack["services"]["proxy-1"]["healthcheck"]["tset"] = stack["services"]["proxy-1"]["healthcheck"].pop("test")
    broken.write_text(yaml.safe_dump(stack))
    assert check_compose_spec(broken).returncode != 0


# --- Services, images, health checks, ports --------------------------------------------


def test_all_services_are_there(main: dict) -> None:
    assert set(main["services"]) == SERVICES


def test_images_are_pinned(main: dict) -> None:
    for name, service in main["services"].items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and tag and tag != "latest", name
        if "build" not in service:  # pulled: a version (alpine variant or not), not a moving tag like `stable`
            assert re.fullmatch(r"v?\d+\.\d+\.\d+(-alpine)?", tag), f"{name}: {service['image']}"
    # The base image: by Python minor version, pinned to a digest only by
    # compose/pin-base-image.sh (which reads it from the registry).
    assert re.fullmatch(r"python:3\.11-slim-[a-z]+(@sha256:[0-9a-f]{64})?", dockerfile_base_image()), dockerfile_base_image()


def test_proxy_and_exporter_share_one_image_built_from_the_repo(main: dict) -> None:
    exporter = main["services"]["exporter"]
    for name in PROXY_REPLICAS:
        proxy = main["services"][name]
        assert proxy["image"] == exporter["image"], name
        assert proxy["build"] == exporter["build"], name
        context = (COMPOSE_DIR / proxy["build"]["context"]).resolve()
        assert context == REPO
        assert (context / proxy["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert command_option(proxy, "--upstream") == "http://ollama:11434", name
    assert exporter["environment"]["OLLAMA_HOST"] == "http://ollama:11434"


def test_every_service_has_a_health_check_its_image_can_run(main: dict) -> None:
    for name, service in main["services"].items():
        if name in ONE_SHOT:
            continue
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD", name
        # None of these images ships curl; ollama/python/busybox wget/redis-cli are what they have.
        assert check[1] in {"ollama", "python", "wget", "redis-cli"}, name
        urls = re.findall(r"http://[^'\s\"]+", " ".join(check))
        for url in urls:
            assert urlsplit(url).port == listen_port(name, service), f"{name}: {url}"
        if name in {*PROXY_REPLICAS, "lb", "exporter"}:
            # The LB's goes through to a replica: healthy while one answers.
            assert urls and urlsplit(urls[0]).path == "/healthz", name


def test_only_the_lb_and_grafana_are_published_on_loopback(main: dict) -> None:
    """Clients reach the proxy replicas through the LB only (sticky sessions); the
    replicas, Redis and the rest stay on the compose network."""
    published = {name for name, service in main["services"].items() if service.get("ports")}
    assert published == PUBLISHED
    for name in PUBLISHED:
        service = main["services"][name]
        [port] = service["ports"]
        host_ip, host_port, container_port = interpolate(port).split(":")
        assert host_ip == "127.0.0.1", name
        assert int(host_port) == int(container_port) == listen_port(name, service), name


# --- GPU ------------------------------------------------------------------------------


def test_ollama_and_exporter_reserve_nvidia_gpus(main: dict) -> None:
    for name, service in main["services"].items():
        devices = gpu_devices(service)
        if name in GPU_SERVICES:
            assert [d["driver"] for d in devices] == ["nvidia"], name
        else:
            assert devices == [], name
    # NVML is in the driver's utility libraries: without them the exporter sees no GPU.
    assert "utility" in gpu_devices(main["services"]["exporter"])[0]["capabilities"]


def test_cpu_override_only_removes_gpu_reservations(main: dict, cpu_merged: dict) -> None:
    assert all(gpu_devices(service) == [] for service in cpu_merged["services"].values())
    # Nothing else changes: each service is the GPU one minus its device reservation.
    for name, service in cpu_merged["services"].items():
        original = main["services"][name]
        reservations = original.get("deploy", {}).get("resources", {}).get("reservations", {})
        assert {k: v for k, v in service.items() if k != "deploy"} == {
            k: v for k, v in original.items() if k != "deploy"
        }, name
        if name in GPU_SERVICES:
            assert set(reservations) == {"devices"}, name


# --- Secrets ---------------------------------------------------------------------------


def test_admin_token_is_one_secret_shared_by_proxy_and_alertmanager(main: dict) -> None:
    secret_file = (COMPOSE_DIR / main["secrets"]["admin_token"]["file"]).resolve()
    assert secret_file == COMPOSE_DIR / "secrets" / "admin_token"
    for name in PROXY_REPLICAS:
        proxy = main["services"][name]
        assert "admin_token" in proxy["secrets"], name
        assert proxy["environment"]["OLLAMA_SIDECAR_ADMIN_TOKEN_FILE"] == "/run/secrets/admin_token", name
    assert "admin_token" in main["services"]["alertmanager"]["secrets"]
    webhook = rollback_webhook()
    assert webhook["http_config"]["authorization"]["credentials_file"] == "/run/secrets/admin_token"


def test_every_replica_hashes_session_labels_with_one_key_from_a_secret(main: dict) -> None:
    """Without a shared key each replica makes its own: a session's label in /metrics would
    depend on the replica that served it and change at every restart."""
    secret_file = (COMPOSE_DIR / main["secrets"]["session_key"]["file"]).resolve()
    assert secret_file == COMPOSE_DIR / "secrets" / "session_key"
    for name in PROXY_REPLICAS:
        proxy = main["services"][name]
        assert "session_key" in proxy["secrets"], name
        assert proxy["environment"]["OLLAMA_SIDECAR_SESSION_KEY_FILE"] == "/run/secrets/session_key", name
    assert "session_key_file" not in load_yaml(PROXY_CONFIG)


def test_grafana_admin_password_comes_from_a_secret(main: dict) -> None:
    grafana = main["services"]["grafana"]
    assert "grafana_admin_password" in grafana["secrets"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_real_secrets_are_ignored_by_git() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "compose/secrets"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == ["compose/secrets/README.md"]
    for name in load_compose(MAIN)["secrets"]:
        ignored = subprocess.run(["git", "check-ignore", "-q", f"compose/secrets/{name}"], cwd=REPO)
        assert ignored.returncode == 0, f"git would commit compose/secrets/{name}"


def test_init_secrets_creates_every_compose_secret_once(tmp_path: Path, main: dict) -> None:
    script = tmp_path / "compose" / "init-secrets.sh"
    script.parent.mkdir()
    shutil.copy(COMPOSE_DIR / "init-secrets.sh", script)
    first = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True)

    secrets_dir = script.parent / "secrets"
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    created = {}
    for name, secret in main["secrets"].items():
        path = (script.parent / secret["file"]).resolve()
        created[name] = path.read_text()
        assert re.fullmatch(r"[0-9a-f]{64}", created[name]), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, name
    assert len(set(created.values())) == len(created), "secrets must differ"
    assert first.stdout.count("created") == len(created)

    again = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True)
    assert again.stdout.count("kept") == len(created)
    assert {n: (script.parent / s["file"]).resolve().read_text() for n, s in main["secrets"].items()} == created


# --- Wiring between compose and the provisioning files ---------------------------------


def test_every_bind_mount_source_is_in_the_repo(main: dict) -> None:
    generated = {PROVISIONING / "prometheus" / "rules", PROVISIONING / "grafana" / "dashboards"}
    for name, service in main["services"].items():
        for source in mounts(service).values():
            if source.startswith("/"):
                assert Path(source).exists() or Path(source) in generated, f"{name}: {source}"
            else:
                assert source in main["volumes"], f"{name}: undeclared volume {source}"


def test_prometheus_loads_each_profiles_config_with_its_own_rules(main: dict) -> None:
    """One variable picks the profile; the config it names loads that profile's rules, so
    fast rules never run at production scrape intervals (tests/test_profiles.py)."""
    prometheus = main["services"]["prometheus"]
    [config_arg] = [a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")]
    assert PROFILE_VARIABLE in config_arg
    profiles = {"production": interpolate(config_arg), "fast": with_variable(config_arg, PROFILE_VARIABLE,
                                                                              "prometheus-fast.yml")}
    for profile, config_path in profiles.items():
        host_config = host_path(prometheus, config_path)
        assert host_config == CONFIGS[profile], profile
        for pattern in load_yaml(host_config)["rule_files"]:
            # rule_files are relative to the config: resolved inside the container, they land
            # in the same mounted directory as the generated files.
            in_container = str(Path(config_path).parent / pattern)
            assert sorted(host_config.parent.glob(pattern)) == [REPO / RULE_FILES[profile]], profile
            assert host_path(prometheus, in_container) == host_config.parent / pattern, profile
    # Nothing else picks rules: no mount depends on a variable.
    assert not any("$" in entry for entry in prometheus["volumes"])
    data_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--storage.tsdb.path="))
    assert mounts(prometheus)[data_path] == "prometheus-data"


def scrape_targets(job: dict) -> list[tuple[str, int]]:
    """(host, port) of every target a shipped job finds: static ones, or DNS names."""
    if "dns_sd_configs" in job:
        return [(name, dns["port"]) for dns in job["dns_sd_configs"] for name in dns["names"]]
    return [(host, int(port)) for static in job["static_configs"]
            for host, port in (target.rsplit(":", 1) for target in static["targets"])]


@pytest.mark.parametrize("config", sorted(CONFIGS.values()), ids=lambda p: p.name)
def test_prometheus_targets_are_compose_services_on_their_ports(main: dict, config: Path) -> None:
    metrics_port = int(load_yaml(PROXY_CONFIG)["metrics"]["listen"].rsplit(":", 1)[1])
    for job in load_yaml(config)["scrape_configs"]:
        for host, port in scrape_targets(job):
            service = "prometheus" if host == "localhost" else host
            if service in PROXY_REPLICAS:
                # A replica's /metrics lives on its own listener (metrics.listen), on the
                # compose network only: never a port published for clients.
                assert port == metrics_port, job["job_name"]
                assert not main["services"][service].get("ports"), service
                continue
            assert port == listen_port(service, main["services"][service]), job["job_name"]


@pytest.mark.parametrize("config", sorted(CONFIGS.values()), ids=lambda p: p.name)
def test_prometheus_scrapes_every_proxy_replica(main: dict, config: Path) -> None:
    [job] = [j for j in load_yaml(config)["scrape_configs"] if j["job_name"] == "ollama-proxy"]
    assert sorted(host for host, _ in scrape_targets(job)) == sorted(PROXY_REPLICAS)


def test_alertmanager_webhook_and_grafana_datasource_reach_their_services(main: dict) -> None:
    webhook = rollback_webhook()
    [datasource] = load_yaml(PROVISIONING / "grafana" / "datasources" / "prometheus.yml")["datasources"]
    for url in (webhook["url"], datasource["url"]):
        parts = urlsplit(url)
        service = service_answering(main, parts.hostname)
        assert parts.port == listen_port(service, main["services"][service]), url


def test_alertmanagers_webhook_goes_through_the_lb(main: dict) -> None:
    """Any replica can take a rollback (Redis shares it); through the LB the webhook still
    lands while one replica is down or restarting."""
    assert service_answering(main, urlsplit(rollback_webhook()["url"]).hostname) == "lb"


def test_grafana_is_provisioned_with_the_datasource_and_the_generated_dashboards(main: dict) -> None:
    found = mounts(main["services"]["grafana"])
    assert found["/etc/grafana/provisioning/datasources"] == str(PROVISIONING / "grafana" / "datasources")
    assert found["/etc/grafana/provisioning/dashboards"] == str(PROVISIONING / "grafana" / "dashboard-providers")
    [provider] = load_yaml(PROVISIONING / "grafana" / "dashboard-providers" / "ollama-sidecar.yml")["providers"]
    assert found[provider["options"]["path"]] == str(PROVISIONING / "grafana" / "dashboards")
    assert found["/var/lib/grafana"] == "grafana-data"


def test_proxy_replicas_read_the_example_config(main: dict) -> None:
    # The mounted directory is the config's own: nothing else of compose/ (secrets/!)
    # becomes visible in the container.
    assert [p.name for p in PROXY_CONFIG.parent.iterdir()] == [PROXY_CONFIG.name]
    config = load_yaml(PROXY_CONFIG)
    for name in PROXY_REPLICAS:
        proxy = main["services"][name]
        assert host_path(proxy, command_option(proxy, "--config")) == PROXY_CONFIG, name
        assert config["upstream"] == command_option(proxy, "--upstream"), name
    assert urlsplit(config["alertmanager_url"]).port == IMAGE_PORTS["alertmanager"]
    for name, route in config["routes"].items():
        assert 0 <= route["canary_weight"] <= 100, name


def test_replicas_share_their_state_through_redis_not_a_state_file(main: dict) -> None:
    config = load_yaml(PROXY_CONFIG)
    assert "state_file" not in config  # the proxy refuses `state` and `state_file` together
    url = urlsplit(config["state"]["url"])
    assert url.scheme == "redis"
    assert url.hostname == "redis" and url.port == listen_port("redis", main["services"]["redis"])
    for name in PROXY_REPLICAS:
        # Started only once Redis answers: else a replica routes with the config's weights
        # instead of the rollbacks Redis holds.
        assert main["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_each_replica_keeps_its_journal_on_a_volume_of_its_own(main: dict) -> None:
    """Two replicas appending to and truncating one journal file would lose each other's
    rollbacks; each journal must also survive its container (a named volume)."""
    journal_dir = str(Path(load_yaml(PROXY_CONFIG)["state"]["journal"]).parent)
    volumes = [mounts(main["services"][name])[journal_dir] for name in PROXY_REPLICAS]
    assert all(v in main["volumes"] for v in volumes), volumes
    assert len(set(volumes)) == len(volumes), volumes
    # The image creates that directory owned by its non-root user, so a fresh named
    # volume mounted there is writable by the proxy.
    dockerfile = DOCKERFILE.read_text()
    assert f"chown sidecar {journal_dir}" in dockerfile
    assert re.search(r"^USER\s+(?!root|0\b)\S+", dockerfile, re.MULTILINE)


def test_the_single_proxys_state_file_is_imported_read_only_by_every_replica(main: dict) -> None:
    """Whichever replica starts first against an empty Redis imports the state file the
    single proxy kept on `proxy-state`, so a rollback made before the upgrade holds."""
    source = Path(load_yaml(PROXY_CONFIG)["state"]["import_from"])
    assert source.name == "state.json"
    for name in PROXY_REPLICAS:
        entries = {interpolate(e).split(":")[1]: interpolate(e) for e in main["services"][name]["volumes"]}
        entry = entries[str(source.parent)]
        assert entry.split(":")[0] == "proxy-state" and entry.endswith(":ro"), (name, entry)


def test_the_two_replicas_differ_only_in_their_name_and_journal_volume(main: dict) -> None:
    first, second = (dict(main["services"][name]) for name in PROXY_REPLICAS)
    assert (first.pop("hostname"), second.pop("hostname")) == PROXY_REPLICAS
    journal_dir = str(Path(load_yaml(PROXY_CONFIG)["state"]["journal"]).parent)
    for service in (first, second):
        service["volumes"] = [v for v in service["volumes"] if v.split(":")[1] != journal_dir]
    assert first == second


def test_redis_persists_on_a_volume_with_its_append_only_file(main: dict) -> None:
    redis = main["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert mounts(redis)["/data"] == "redis-data"  # the official image's working directory
    assert not redis.get("ports")


def test_ollama_models_and_alertmanager_silences_live_on_named_volumes(main: dict) -> None:
    assert mounts(main["services"]["ollama"])["/root/.ollama"] == "ollama-models"
    assert mounts(main["services"]["alertmanager"])["/alertmanager"] == "alertmanager-data"


def test_docker_build_context_holds_every_package() -> None:
    """.dockerignore is an allow-list: a new top-level package must be added to it."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml"} <= allowed
    assert not {".venv", ".git", "compose", "tests"} & allowed


def test_init_secrets_fails_rather_than_write_a_weak_secret(tmp_path: Path) -> None:
    """Without /dev/urandom-quality randomness it must fail, not write a weak secret."""
    script = tmp_path / "compose" / "init-secrets.sh"
    script.parent.mkdir()
    # A `head` that produces nothing stands in for a broken random source.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "head").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "head").chmod(0o755)
    shutil.copy(COMPOSE_DIR / "init-secrets.sh", script)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    result = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "random" in result.stderr
    assert not (script.parent / "secrets" / "admin_token").exists()


# --- The load balancer (compose/lb/nginx.conf) -----------------------------------------


def lb_config() -> str:
    """nginx.conf without its comments."""
    return re.sub(r"#[^\n]*", "", LB_CONFIG.read_text())


def nginx_maps(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """`map $source $target { key value; … }` as target → (source, {key: value})."""
    found = {}
    for source, target, body in re.findall(r"\bmap\s+(\$\w+)\s+(\$\w+)\s*\{([^}]*)\}", text):
        entries = dict(re.findall(r'("[^"]*"|\S+)\s+(\S+);', body))
        found[target] = (source, {k.strip('"'): v for k, v in entries.items()})
    return found


def evaluate(variable: str, maps: dict[str, tuple[str, dict[str, str]]], request: dict[str, str]) -> str:
    """A variable's value for a request, as nginx's `map`s compute it (exact keys only)."""
    if variable not in maps:
        return request.get(variable, "")
    source, entries = maps[variable]
    value = evaluate(source, maps, request)
    result = entries.get(value, entries["default"])
    return evaluate(result, maps, request) if result.startswith("$") else result


def upstream_block(text: str) -> tuple[str, str]:
    [(name, body)] = re.findall(r"\bupstream\s+(\w+)\s*\{([^}]*)\}", text)
    return name, body


def directive(text: str, name: str) -> list[str]:
    """Every value of a directive (`name value…;`), in order."""
    return [value.strip() for value in re.findall(rf"(?:^|[;{{}}\s]){name}\s+([^;]*);", text)]


@pytest.mark.parametrize(("headers", "expected"), [
    ({"$http_x_session_id": "s-1", "$http_x_user_id": "u-1"}, "s-1"),
    ({"$http_x_session_id": "s-1"}, "s-1"),
    ({"$http_x_user_id": "u-1"}, "u-1"),
    ({}, "10.0.0.9"),
])
def test_the_lb_hashes_on_the_session_then_the_user_then_the_client_address(headers: dict[str, str],
                                                                          expected: str) -> None:
    """The proxy's own first session sources, in its order: a session stays on one replica."""
    text = lb_config()
    _, upstream = upstream_block(text)
    [hash_key] = directive(upstream, "hash")
    assert hash_key.split() == ["$sticky_key", "consistent"]
    request = {"$remote_addr": "10.0.0.9", **headers}
    assert evaluate("$sticky_key", nginx_maps(text), request) == expected
    from proxy.config import DEFAULT_SESSION_SOURCES
    assert DEFAULT_SESSION_SOURCES[:2] == ("header:X-Session-ID", "header:X-User-ID")


def test_the_lb_sends_to_every_replica_by_its_own_name(main: dict) -> None:
    """Consistent hashing places a server by its name: one name per replica (not one
    name resolving to all), each re-resolved as compose recreates containers."""
    text = LB_CONFIG.read_text()
    block = re.search(r"# replicas:begin\n(.*?)# replicas:end", text, re.DOTALL)
    assert block, "the replicas:begin/end markers tests/test_scaled_topology.py renders"
    servers = [line.split() for line in directive(block.group(1), "server")]
    expected = [f"{name}:{listen_port(name, main['services'][name])}" for name in PROXY_REPLICAS]
    assert [s[0] for s in servers] == expected
    assert all("resolve" in s[1:] for s in servers)
    assert directive(lb_config(), "resolver")[0].split()[0] == "127.0.0.11"  # Docker's embedded DNS
    name, upstream = upstream_block(lb_config())
    assert directive(upstream, "zone")[0].split()[0] == name  # `resolve` needs a shared zone
    assert directive(lb_config(), "proxy_pass") == [f"http://{name}"]
    # Re-resolving servers needs nginx 1.27.3 or newer.
    version = main["services"]["lb"]["image"].split(":")[1].split("-")[0]
    assert tuple(int(n) for n in version.split(".")) >= (1, 27, 3)


def test_the_lb_streams_and_outwaits_the_proxy() -> None:
    """Replies token by token, HTTP/1.1 keep-alive to the replicas, and no timeout that
    cuts what the proxy itself still waits for (a model load, a slow stream)."""
    from proxy.config import parse_config
    defaults = parse_config({}, environ={})
    text = lb_config()
    assert directive(text, "proxy_buffering") == ["off"]
    assert directive(text, "proxy_request_buffering") == ["off"]
    assert directive(text, "proxy_http_version") == ["1.1"]
    assert directive(text, "proxy_set_header").count('Connection ""') == 1
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        [value] = directive(text, timeout)
        assert int(value.removesuffix("s")) >= max(defaults.timeouts.first_byte, defaults.timeouts.idle), timeout
    [body] = directive(text, "client_max_body_size")
    assert int(body.removesuffix("m")) * 1024 * 1024 == defaults.max_body_bytes == PROXY_MAX_BODY_BYTES


def test_the_lb_passes_authorization_and_the_session_headers_through() -> None:
    """API keys, the admin token and the sticky headers reach the replica as sent."""
    text = lb_config()
    assert directive(text, "proxy_pass_request_headers") in ([], ["on"])
    set_headers = [value.split()[0].lower() for value in directive(text, "proxy_set_header")]
    assert not {"authorization", "x-session-id", "x-user-id"} & set(set_headers)
    assert not directive(text, "proxy_hide_header") and not directive(text, "underscores_in_headers")


def test_the_lb_answers_as_the_proxy_and_waits_for_streams_on_stop(main: dict) -> None:
    lb = main["services"]["lb"]
    assert "proxy" in lb["networks"]["default"]["aliases"]
    # nginx stops gracefully (the image's SIGQUIT): in-flight generations get the
    # replicas' own grace period.
    assert lb["stop_grace_period"] == main["services"]["proxy-1"]["stop_grace_period"]
    assert set(lb["depends_on"]) == set(PROXY_REPLICAS)


# --- Reloads read the files on disk: directories, not single files ---------------------


def test_no_config_is_bind_mounted_as_a_single_file(main: dict, cpu_merged: dict) -> None:
    """A single-file bind mount pins the file's inode: an editor or `git checkout` writes a
    new file, the container keeps the old one, and SIGHUP, /-/reload and the proxy's
    reload-on-change silently apply the old config. Every bind mount is a directory."""
    for stack in (main, cpu_merged):
        found = bind_mounts(stack)
        assert found
        for name, target, source in found:
            assert source.is_dir(), f"{name}: {source} is bind-mounted at {target} as a single file"


@pytest.mark.parametrize(("name", "option"), [("proxy-1", "--config"), ("proxy-2", "--config"), ("lb", "-c"),
                                              ("prometheus", "--config.file"), ("alertmanager", "--config.file")])
def test_reloadable_configs_are_read_through_their_mounted_directory(main: dict, name: str, option: str) -> None:
    service = main["services"][name]
    command = service["command"]
    if option in command:
        path = command[command.index(option) + 1]
    else:
        [path] = [a.split("=", 1)[1] for a in command if a.startswith(option + "=")]
    path = interpolate(path)
    assert path not in mounts(service), f"{name}: {path} is itself a mount"
    assert host_path(service, path).is_file(), name


# --- One-shot services ------------------------------------------------------------------


def test_one_shot_services_run_to_completion_before_what_needs_them(main: dict) -> None:
    for name in ONE_SHOT:
        service = main["services"][name]
        assert service["restart"] == "no", name
        assert "healthcheck" not in service and "ports" not in service, name
        waiting = [other for other, s in main["services"].items()
                   if s.get("depends_on", {}).get(name, {}).get("condition") == "service_completed_successfully"]
        assert waiting, f"{name}: nothing waits for it (docker compose up --wait would wait for it to run)"


def test_receivers_check_reads_the_file_alertmanager_loads(main: dict) -> None:
    alertmanager, check = main["services"]["alertmanager"], main["services"]["receivers-check"]
    [config] = [a.split("=", 1)[1] for a in alertmanager["command"] if a.startswith("--config.file=")]
    assert host_path(check, check["command"][0]) == host_path(alertmanager, config)
    assert check["entrypoint"][0] == "python"  # the sidecar image's: PyYAML is a dependency
    assert host_path(check, check["entrypoint"][1]) == COMPOSE_DIR / "receivers-check" / "receivers_check.py"
    assert check["image"] == main["services"]["proxy-1"]["image"]
    assert main["services"]["alertmanager"]["depends_on"]["receivers-check"]["condition"] == \
        "service_completed_successfully"


# --- The image --------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def dockerfile_stages() -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """Instructions before the first FROM, and each stage's (by name, in order)."""
    preamble: list[tuple[str, str]] = []
    stages: dict[str, list[tuple[str, str]]] = {}
    current = preamble
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            image, _, name = args.partition(" AS ")
            current = stages.setdefault(name, [("FROM", image)])
        else:
            current.append((keyword, args))
    return preamble, stages


def dockerfile_base_image() -> str:
    preamble, _ = dockerfile_stages()
    [base] = [args.split("=", 1)[1] for keyword, args in preamble if args.startswith("PYTHON_IMAGE=")]
    return base


def index_of(instructions: list[tuple[str, str]], keyword: str, pattern: str) -> int:
    [index] = [i for i, (k, args) in enumerate(instructions) if k == keyword and re.search(pattern, args)]
    return index


def test_dockerfile_builds_a_wheel_in_one_stage_and_runs_it_from_another() -> None:
    assert DOCKERFILE.read_text().startswith("# syntax=docker/dockerfile:1\n")  # RUN --mount
    preamble, stages = dockerfile_stages()
    assert list(stages) == ["build", "runtime"]  # the last stage is what compose builds
    # Both stages from the same base image, named once (pin-base-image.sh edits that line).
    assert preamble == [("ARG", f"PYTHON_IMAGE={dockerfile_base_image()}")]
    assert all(stage[0] == ("FROM", "${PYTHON_IMAGE}") for stage in stages.values())


def test_dockerfile_installs_dependencies_in_their_own_layer_before_the_code() -> None:
    """A code change must not reinstall every dependency: pyproject.toml alone is copied
    and its dependencies installed, then the code is copied and built without them."""
    build = dockerfile_stages()[1]["build"]
    copies = [args for keyword, args in build if keyword == "COPY"]
    assert copies == ["pyproject.toml ./", ". ./"]
    pyproject = index_of(build, "COPY", r"^pyproject\.toml ")
    deps = index_of(build, "RUN", r"pip .*install --requirement")
    code = index_of(build, "COPY", r"^\. ")
    wheel = index_of(build, "RUN", r"pip wheel --no-deps ")
    assert pyproject < deps < code < wheel
    # The dependency layer installs what pyproject.toml lists, and not the project itself.
    [snippet] = re.findall(r"python -c '([^']*)'", build[deps][1])
    listed = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, capture_output=True, text=True, check=True)
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert listed.stdout.splitlines() == expected
    assert not re.search(r"install\s+(\S+\s+)*\.(\s|$)", build[deps][1])


def test_runtime_image_holds_no_source_tree_wheel_or_build_tools() -> None:
    runtime = dockerfile_stages()[1]["runtime"]
    # Nothing from the build context: only the dependencies' environment from `build`.
    copies = [args for keyword, args in runtime if keyword in {"COPY", "ADD"}]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    venv = index_of(runtime, "COPY", r"/opt/venv")
    # The wheel is bind-mounted for the install only, installed without dependencies.
    install = index_of(runtime, "RUN", r"--mount=type=bind,from=build,source=/wheels,target=/wheels")
    assert re.search(r"pip .*install --no-deps --no-index /wheels/\*\.whl", runtime[install][1])
    assert venv < install
    text = " ".join(args for _, args in runtime)
    for tool in ("apt-get", "gcc", "build-essential", "git "):
        assert tool not in text, tool
    # The build stage creates the environment without pip/setuptools of its own.
    build = dockerfile_stages()[1]["build"]
    assert ("RUN", "python -m venv --without-pip /opt/venv") in build
    assert ("ENTRYPOINT", '["ollama-sidecar"]') in runtime
    assert any(k == "ENV" and "PATH=/opt/venv/bin:$PATH" in a for k, a in runtime)


# --- pin-base-image.sh (never against a real registry here) ----------------------------

FAKE_CURL = """#!/bin/sh
# Stands in for the registry: logs its arguments, answers like auth.docker.io and
# registry-1.docker.io would, or fails like curl -f when FAKE_CURL_FAIL is set.
printf '%s\\n' "$*" >> "$FAKE_CURL_LOG"
[ -z "${FAKE_CURL_FAIL:-}" ] || exit 22
case "$*" in
    *auth.docker.io/token*) printf '{"token":"tok-123","access_token":"tok-123","expires_in":300}\\n' ;;
    *-fsSI*/v2/*/manifests/*) printf 'HTTP/2 200\\r\\ncontent-type: application/vnd.oci.image.index.v1+json\\r\\ndocker-content-digest: %s\\r\\n\\r\\n' "$FAKE_DIGEST" ;;
    *) exit 22 ;;
esac
"""


def run_pin(tmp_path: Path, digest: str, fail: bool = False) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "curl").write_text(FAKE_CURL)
    (bin_dir / "curl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_CURL_LOG": str(tmp_path / "curl.log"),
           "FAKE_DIGEST": digest, **({"FAKE_CURL_FAIL": "1"} if fail else {})}
    return subprocess.run(["sh", str(tmp_path / "compose" / "pin-base-image.sh")], capture_output=True, text=True,
                          env=env)


@pytest.fixture
def pin_copy(tmp_path: Path) -> Path:
    compose = tmp_path / "compose"
    compose.mkdir()
    shutil.copy(COMPOSE_DIR / "pin-base-image.sh", compose)
    # As committed, but unpinned (the committed file may carry a pin read from the registry).
    unpinned = re.sub(r"^(ARG PYTHON_IMAGE=[^@\n]+)@\S+$", r"\1", DOCKERFILE.read_text(), flags=re.MULTILINE)
    (compose / "Dockerfile").write_text(unpinned)
    return compose / "Dockerfile"


def test_pin_base_image_pins_then_refreshes_the_digest_it_reads(tmp_path: Path, pin_copy: Path) -> None:
    before = pin_copy.read_text()
    tag = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", before, re.MULTILINE).group(1)
    first, second = "sha256:" + "a" * 64, "sha256:" + "b" * 64

    result = run_pin(tmp_path, first)
    assert result.returncode == 0, result.stderr
    assert pin_copy.read_text() == before.replace(f"ARG PYTHON_IMAGE={tag}\n", f"ARG PYTHON_IMAGE={tag}@{first}\n")
    # It asked the registry for that tag's manifest list, with the pull token.
    name, _, version = tag.rpartition(":")
    log = (tmp_path / "curl.log").read_text()
    assert f"scope=repository:library/{name}:pull" in log
    assert "Authorization: Bearer tok-123" in log
    assert f"https://registry-1.docker.io/v2/library/{name}/manifests/{version}" in log

    result = run_pin(tmp_path, second)  # the tag moved: the pin follows, once
    assert result.returncode == 0, result.stderr
    assert pin_copy.read_text() == before.replace(f"ARG PYTHON_IMAGE={tag}\n", f"ARG PYTHON_IMAGE={tag}@{second}\n")
    assert run_pin(tmp_path, second).stdout.startswith("unchanged")


@pytest.mark.parametrize(("digest", "fail"), [("sha256:" + "a" * 64, True), ("", False), ("sha256:abc", False),
                                              ("sha256:" + "a" * 64 + "; rm -rf /", False)])
def test_pin_base_image_changes_nothing_without_a_well_formed_digest(tmp_path: Path, pin_copy: Path, digest: str,
                                                                     fail: bool) -> None:
    before = pin_copy.read_text()
    result = run_pin(tmp_path, digest, fail=fail)
    assert result.returncode != 0
    assert "pin-base-image:" in result.stderr
    assert pin_copy.read_text() == before
    assert sorted(p.name for p in pin_copy.parent.iterdir()) == ["Dockerfile", "pin-base-image.sh"]  # no temp file left
