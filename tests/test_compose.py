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

from alerts.render import RULE_FILES
from tests.rule_profiles import CONFIGS

REPO = Path(__file__).resolve().parent.parent
COMPOSE_DIR = REPO / "compose"
MAIN = COMPOSE_DIR / "docker-compose.yml"
CPU = COMPOSE_DIR / "docker-compose.cpu.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROXY_CONFIG = COMPOSE_DIR / "proxy" / "proxy.yaml"
PROVISIONING = REPO / "provisioning"
# Selects the Prometheus config, and with it the rule profile (compose's only variable
# besides OLLAMA_SIDECAR_BIND).
PROFILE_VARIABLE = "OLLAMA_SIDECAR_PROMETHEUS_CONFIG"

SERVICES = {"ollama", "proxy", "exporter", "prometheus", "alertmanager", "grafana", "receivers-check"}
# Run once at start-up and exit; no health check, never restarted.
ONE_SHOT = {"receivers-check"}
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
    # The base image: by Python minor version, pinned to a digest only by
    # compose/pin-base-image.sh (which reads it from the registry).
    assert re.fullmatch(r"python:3\.11-slim-[a-z]+(@sha256:[0-9a-f]{64})?", dockerfile_base_image()), dockerfile_base_image()


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
        if name in ONE_SHOT:
            continue
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


@pytest.mark.parametrize("config", sorted(CONFIGS.values()), ids=lambda p: p.name)
def test_prometheus_targets_are_compose_services_on_their_ports(main: dict, config: Path) -> None:
    jobs = load_yaml(config)["scrape_configs"]
    for job in jobs:
        [target] = job["static_configs"][0]["targets"]
        host, port = target.rsplit(":", 1)
        service = "prometheus" if host == "localhost" else host
        if service == "proxy":
            # The proxy's /metrics lives on its own listener (metrics.listen), on the compose
            # network only: never the port published for clients.
            metrics_listen = load_yaml(COMPOSE_DIR / "proxy" / "proxy.yaml")["metrics"]["listen"]
            assert int(port) == int(metrics_listen.rsplit(":", 1)[1]), job["job_name"]
            published = [str(p) for p in main["services"]["proxy"].get("ports", [])]
            assert published and not any(p.endswith(f":{port}") for p in published), published
            continue
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
    assert host_path(proxy, config_path) == PROXY_CONFIG
    # The mounted directory is the config's own: nothing else of compose/ (secrets/!)
    # becomes visible in the container.
    assert [p.name for p in PROXY_CONFIG.parent.iterdir()] == [PROXY_CONFIG.name]
    config = load_yaml(PROXY_CONFIG)
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


@pytest.mark.parametrize(("name", "option"), [("proxy", "--config"), ("prometheus", "--config.file"),
                                              ("alertmanager", "--config.file")])
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
    assert check["image"] == main["services"]["proxy"]["image"]
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
