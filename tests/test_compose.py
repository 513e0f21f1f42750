"""The docker compose stack, checked without Docker.

Docker is not available where the suite runs, so the compose files are validated against
the Compose specification (check-jsonschema's vendored `vendor.compose-spec`) and their
wiring is checked structurally: every URL, port, mount and secret one service expects
must be what another service or config file provides. The secrets script runs for real.
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

REPO = Path(__file__).resolve().parent.parent
COMPOSE_DIR = REPO / "compose"
MAIN = COMPOSE_DIR / "docker-compose.yml"
CPU = COMPOSE_DIR / "docker-compose.cpu.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROVISIONING = REPO / "provisioning"

SERVICES = {"ollama", "proxy", "exporter", "prometheus", "alertmanager", "grafana"}
PUBLISHED = {"proxy", "grafana"}
GPU_SERVICES = {"ollama", "exporter"}
# Ports the upstream images listen on (not configurable from this repo).
IMAGE_PORTS = {"ollama": 11434, "prometheus": 9090, "alertmanager": 9093, "grafana": 3000}
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
    return int(command_option(service, "--listen").rsplit(":", 1)[1])


def mounts(service: dict) -> dict[str, str]:
    """Container path → source (host path made absolute, or the volume name)."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = interpolate(entry).split(":")[:2]
        if source.startswith("."):
            source = str((COMPOSE_DIR / source).resolve())
        found[target] = source
    return found


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
    stack["services"]["proxy"]["healthcheck"]["tset"] = stack["services"]["proxy"]["healthcheck"].pop("test")
    broken.write_text(yaml.safe_dump(stack))
    assert check_compose_spec(broken).returncode != 0


# --- Services, images, health checks, ports --------------------------------------------


def test_all_services_are_there(main: dict) -> None:
    assert set(main["services"]) == SERVICES


def test_images_are_pinned(main: dict) -> None:
    for name, service in main["services"].items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and tag and tag != "latest", name
        if "build" not in service:  # pulled: a version, not a moving tag like `stable`
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {service['image']}"
    [base] = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base


def test_proxy_and_exporter_share_one_image_built_from_the_repo(main: dict) -> None:
    proxy, exporter = main["services"]["proxy"], main["services"]["exporter"]
    assert proxy["image"] == exporter["image"]
    assert proxy["build"] == exporter["build"]
    context = (COMPOSE_DIR / proxy["build"]["context"]).resolve()
    assert context == REPO
    assert (context / proxy["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert command_option(proxy, "--upstream") == "http://ollama:11434"
    assert exporter["environment"]["OLLAMA_HOST"] == "http://ollama:11434"


def test_every_service_has_a_health_check_its_image_can_run(main: dict) -> None:
    for name, service in main["services"].items():
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD", name
        # None of these images ships curl; ollama/python/busybox wget are what they have.
        assert check[1] in {"ollama", "python", "wget"}, name
        urls = re.findall(r"http://[^'\s\"]+", " ".join(check))
        for url in urls:
            assert urlsplit(url).port == listen_port(name, service), f"{name}: {url}"
        if name in {"proxy", "exporter"}:
            assert urls and urlsplit(urls[0]).path == "/healthz", name


def test_only_proxy_and_grafana_are_published_on_loopback(main: dict) -> None:
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
    assert "admin_token" in main["services"]["proxy"]["secrets"]
    assert "admin_token" in main["services"]["alertmanager"]["secrets"]
    assert main["services"]["proxy"]["environment"]["OLLAMA_SIDECAR_ADMIN_TOKEN_FILE"] == "/run/secrets/admin_token"
    webhook = rollback_webhook()
    assert webhook["http_config"]["authorization"]["credentials_file"] == "/run/secrets/admin_token"


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
    for name in ("admin_token", "grafana_admin_password"):
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


def test_prometheus_loads_the_committed_config_and_rules(main: dict) -> None:
    prometheus = main["services"]["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    found = mounts(prometheus)
    assert found[config_path] == str(PROVISIONING / "prometheus" / "prometheus.yml")
    # rule_files are relative to prometheus.yml: the rules directory sits next to it.
    [rules_entry] = [v for v in prometheus["volumes"] if "OLLAMA_SIDECAR_RULES" in v]
    assert found[str(Path(config_path).parent / "rules")] == str(PROVISIONING / "prometheus" / "rules")
    fast = (COMPOSE_DIR / rules_entry.replace("${OLLAMA_SIDECAR_RULES:-rules}", "rules-fast").split(":")[0]).resolve()
    assert fast == PROVISIONING / "prometheus" / "rules-fast"
    data_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--storage.tsdb.path="))
    assert found[data_path] == "prometheus-data"


def test_prometheus_targets_are_compose_services_on_their_ports(main: dict) -> None:
    jobs = load_yaml(PROVISIONING / "prometheus" / "prometheus.yml")["scrape_configs"]
    for job in jobs:
        [target] = job["static_configs"][0]["targets"]
        host, port = target.rsplit(":", 1)
        service = "prometheus" if host == "localhost" else host
        assert int(port) == listen_port(service, main["services"][service]), job["job_name"]


def test_alertmanager_webhook_and_grafana_datasource_reach_their_services(main: dict) -> None:
    webhook = rollback_webhook()
    [datasource] = load_yaml(PROVISIONING / "grafana" / "datasources" / "prometheus.yml")["datasources"]
    for url in (webhook["url"], datasource["url"]):
        parts = urlsplit(url)
        assert parts.port == listen_port(parts.hostname, main["services"][parts.hostname]), url


def test_grafana_is_provisioned_with_the_datasource_and_the_generated_dashboards(main: dict) -> None:
    found = mounts(main["services"]["grafana"])
    assert found["/etc/grafana/provisioning/datasources"] == str(PROVISIONING / "grafana" / "datasources")
    assert found["/etc/grafana/provisioning/dashboards"] == str(PROVISIONING / "grafana" / "dashboard-providers")
    [provider] = load_yaml(PROVISIONING / "grafana" / "dashboard-providers" / "ollama-sidecar.yml")["providers"]
    assert found[provider["options"]["path"]] == str(PROVISIONING / "grafana" / "dashboards")
    assert found["/var/lib/grafana"] == "grafana-data"


def test_proxy_reads_the_example_config_and_keeps_state_on_a_volume(main: dict) -> None:
    proxy = main["services"]["proxy"]
    found = mounts(proxy)
    config_path = command_option(proxy, "--config")
    assert found[config_path] == str(COMPOSE_DIR / "proxy.yaml")
    config = load_yaml(COMPOSE_DIR / "proxy.yaml")
    assert found[str(Path(config["state_file"]).parent)] == "proxy-state"
    assert config["upstream"] == command_option(proxy, "--upstream")
    assert urlsplit(config["alertmanager_url"]).port == IMAGE_PORTS["alertmanager"]
    for name, route in config["routes"].items():
        assert 0 <= route["canary_weight"] <= 100, name
    # The image creates the state directory owned by its non-root user, so the fresh
    # named volume mounted there is writable by the proxy.
    dockerfile = DOCKERFILE.read_text()
    assert f"chown sidecar {Path(config['state_file']).parent}" in dockerfile
    assert re.search(r"^USER\s+(?!root|0\b)\S+", dockerfile, re.MULTILINE)


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
