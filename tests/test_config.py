"""Configuration: precedence, OLLAMA_HOST as Ollama reads it, errors that name the key, the
published JSON Schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from proxy.common.listen import parse_listen
from proxy.common.ollama_host import parse_ollama_host
from proxy.config import ConfigError, config_schema, load_config, parse_config, render_config_schema

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value,url", [
    ("", "http://127.0.0.1:11434"), ("gpu1", "http://gpu1:11434"), ("gpu1:8080", "http://gpu1:8080"),
    ("http://gpu1", "http://gpu1:80"), ("https://gpu1", "https://gpu1:443"), ("0.0.0.0", "http://127.0.0.1:11434"),
    ("0.0.0.0:9999", "http://127.0.0.1:9999"), ("[::1]:5000", "http://[::1]:5000"),
    ("http://h:1/ollama/", "http://h:1/ollama"),
])
def test_ollama_host_is_read_like_ollama_does(value, url):
    assert parse_ollama_host(value) == url


# --- precedence: flag > environment > file > default, for every key ------------------------------

def write_config(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_listen_defaults_to_loopback_port_11435():
    assert parse_config({}, environ={}).listen == "127.0.0.1:11435"


def test_listen_in_the_file_beats_the_default(tmp_path):
    assert load_config(write_config(tmp_path, "listen: 127.0.0.1:1\n"), environ={}).listen == "127.0.0.1:1"


def test_ollama_sidecar_listen_beats_listen_in_the_file(tmp_path):
    env = {"OLLAMA_SIDECAR_LISTEN": "127.0.0.1:2"}
    assert load_config(write_config(tmp_path, "listen: 127.0.0.1:1\n"), environ=env).listen == "127.0.0.1:2"


def test_the_listen_flag_beats_the_environment_and_the_file(tmp_path):
    env = {"OLLAMA_SIDECAR_LISTEN": "127.0.0.1:2"}
    cfg = load_config(write_config(tmp_path, "listen: 127.0.0.1:1\n"), environ=env,
                      overrides={"listen": "127.0.0.1:3", "upstream": None})
    assert cfg.listen == "127.0.0.1:3"


def test_an_empty_environment_variable_counts_as_unset(tmp_path):
    env = {"OLLAMA_SIDECAR_LISTEN": "", "OLLAMA_SIDECAR_UPSTREAM": "", "OLLAMA_HOST": ""}
    cfg = load_config(write_config(tmp_path, "listen: 127.0.0.1:1\n"), environ=env)
    assert cfg.listen == "127.0.0.1:1" and cfg.upstream == "http://127.0.0.1:11434"


def test_upstream_defaults_to_ollama_on_this_machine():
    assert parse_config({}, environ={}).upstream == "http://127.0.0.1:11434"


def test_ollama_host_beats_the_default_upstream():
    assert parse_config({}, environ={"OLLAMA_HOST": "envhost"}).upstream == "http://envhost:11434"


def test_ollama_host_does_not_beat_upstream_in_the_file(tmp_path):
    cfg = load_config(write_config(tmp_path, "upstream: http://file:1\n"), environ={"OLLAMA_HOST": "envhost"})
    assert cfg.upstream == "http://file:1"


def test_ollama_sidecar_upstream_beats_upstream_in_the_file(tmp_path):
    env = {"OLLAMA_SIDECAR_UPSTREAM": "sidecar-env:2", "OLLAMA_HOST": "envhost"}
    assert load_config(write_config(tmp_path, "upstream: http://file:1\n"), environ=env).upstream == "http://sidecar-env:2"


def test_the_upstream_flag_beats_every_other_source(tmp_path):
    env = {"OLLAMA_SIDECAR_UPSTREAM": "sidecar-env:2", "OLLAMA_HOST": "envhost"}
    cfg = load_config(write_config(tmp_path, "upstream: http://file:1\n"), environ=env,
                      overrides={"listen": None, "upstream": "flag:3"})
    assert cfg.upstream == "http://flag:3"


def test_the_admin_token_file_from_the_environment_beats_the_one_in_the_file(tmp_path):
    (tmp_path / "env-token").write_text("from-env\n")
    (tmp_path / "file-token").write_text("from-file\n")
    data = {"admin": {"token_file": str(tmp_path / "file-token")}}
    assert parse_config(data, environ={}).admin_token == "from-file"
    env = {"OLLAMA_SIDECAR_ADMIN_TOKEN_FILE": str(tmp_path / "env-token")}
    assert parse_config(data, environ=env).admin_token == "from-env"
    assert parse_config(data, environ=dict(env, OLLAMA_SIDECAR_ADMIN_TOKEN="t")).admin_token == "t"


def test_a_bad_value_from_the_environment_names_the_key_and_the_variable():
    with pytest.raises(ConfigError) as exc:
        parse_config({}, environ={"OLLAMA_SIDECAR_LISTEN": "nope"})
    assert exc.value.key == "listen" and "OLLAMA_SIDECAR_LISTEN" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_config({}, environ={"OLLAMA_HOST": "ftp://gpu1"})
    assert exc.value.key == "upstream" and "OLLAMA_HOST" in str(exc.value)


# --- an upstream that is the proxy itself ----------------------------------------------------------

@pytest.mark.parametrize("listen, upstream", [
    ("127.0.0.1:11435", "http://127.0.0.1:11435"),
    ("127.0.0.1:11435", "localhost:11435"),
    ("localhost:11435", "http://[::1]:11435"),
    ("0.0.0.0:11435", "http://127.0.0.1:11435"),  # every interface includes loopback
    ("[::]:11435", "0.0.0.0:11435"),  # OLLAMA_HOST=0.0.0.0 is reached on loopback
    ("gpu1:8080", "http://GPU1:8080/ollama"),
])
def test_an_upstream_at_the_proxys_own_listen_address_is_refused(listen, upstream):
    with pytest.raises(ConfigError) as exc:
        parse_config({"listen": listen, "upstream": upstream}, environ={})
    assert exc.value.key == "upstream" and "forward every request to itself" in str(exc.value)


@pytest.mark.parametrize("listen, upstream", [
    ("127.0.0.1:11435", "http://127.0.0.1:11434"),  # another port
    ("192.168.1.5:11435", "http://127.0.0.1:11435"),  # the proxy does not listen on loopback
    ("127.0.0.1:11435", "http://gpu1:11435"),  # another machine
    ("127.0.0.1:0", "http://127.0.0.1:0"),  # port 0: the system picks the proxy's port
])
def test_an_upstream_elsewhere_is_accepted(listen, upstream):
    assert parse_config({"listen": listen, "upstream": upstream}, environ={}).listen == listen


def test_ollama_host_pointing_at_the_proxy_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as exc:
        parse_config({}, environ={"OLLAMA_HOST": "http://127.0.0.1:11435"})
    message = str(exc.value)
    assert message.startswith("upstream: http://127.0.0.1:11435 (from OLLAMA_HOST)")
    assert "forward every request to itself" in message and "OLLAMA_SIDECAR_UPSTREAM" in message


def test_the_files_upstream_is_used_when_ollama_host_points_at_the_proxy():
    cfg = parse_config({"upstream": "http://127.0.0.1:11434"}, environ={"OLLAMA_HOST": "http://127.0.0.1:11435"})
    assert cfg.upstream == "http://127.0.0.1:11434"


def test_a_model_upstream_at_the_proxys_own_listen_address_is_refused():
    with pytest.raises(ConfigError) as exc:
        parse_config({"models": {"qwen3:32b": {"upstream": "127.0.0.1:11435"}}}, environ={})
    assert exc.value.key == "models.qwen3:32b.upstream" and "to itself" in str(exc.value)


def test_the_proxy_refuses_to_start_when_ollama_host_points_at_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_SIDECAR_", "OLLAMA_HOST"))}
    r = subprocess.run([sys.executable, "-m", "proxy.cli", "proxy"], capture_output=True, text=True, timeout=30,
                       env=dict(env, OLLAMA_HOST="http://127.0.0.1:11435"))
    assert r.returncode == 2
    assert "upstream: http://127.0.0.1:11435 (from OLLAMA_HOST)" in r.stderr and "to itself" in r.stderr


@pytest.mark.parametrize("data,key", [
    ({"listen": "nope"}, "listen"),
    ({"timeouts": {"idle": -1}}, "timeouts.idle"),
    ({"timeouts": {"bogus": 1}}, "timeouts.bogus"),
    ({"routes": {"chat": {"stable": "a", "canary": "b", "canary_weight": 150}}}, "routes.chat.canary_weight"),
    ({"routes": {"chat": {"canary": "b"}}}, "routes.chat.stable"),
    ({"routes": {"chat": {"stable": "a", "canary_weight": 10}}}, "routes.chat.canary_weight"),
    ({"session_sources": ["cookie:x"]}, "session_sources[0]"),
    ({"max_body_bytes": "big"}, "max_body_bytes"),
    ({"typo_key": 1}, "typo_key"),
    ({"admin": {"token_file": "/nonexistent/token"}}, "admin.token_file"),
    ({"routes": {"chat": {"stable": "a", "breaker": {"failure_ratio": 2}}}}, "routes.chat.breaker.failure_ratio"),
    ({"models": {"m": {"upstream": "ftp://gpu1"}}}, "models.m.upstream"),
    ({"auth": {"api_keys": "k"}}, "auth.api_keys"),
    ({"admission": {"max_queue": 1.5}}, "admission.max_queue"),
    ({"access_log": "yes"}, "access_log"),
])
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError) as exc:
        parse_config(data, environ={})
    assert exc.value.key == key and str(exc.value).startswith(f"{key}:")


def test_secrets_come_from_env_or_files_and_never_show_in_repr(tmp_path):
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    cfg = parse_config({"admin": {"token_file": str(token)}}, environ={})
    assert cfg.admin_token == "t0ken" and "t0ken" not in repr(cfg)
    assert parse_config({}, environ={"OLLAMA_SIDECAR_ADMIN_TOKEN": "e"}).admin_token == "e"


def test_cli_stops_on_config_error_naming_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("routes:\n  chat:\n    stable: a\n    canary_weight: 10\n")
    r = subprocess.run([sys.executable, "-m", "proxy.cli", "proxy", "--config", str(f)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "routes.chat.canary_weight" in r.stderr


def test_the_shipped_compose_proxy_config_is_valid(tmp_path):
    token = tmp_path / "token"
    token.write_text("t\n")
    cfg = load_config("compose/proxy/proxy.yaml", environ={"OLLAMA_SIDECAR_ADMIN_TOKEN_FILE": str(token)})
    assert cfg.listen == "0.0.0.0:11435" and cfg.upstream == "http://ollama:11434"
    assert cfg.routes["chat"].canary and cfg.alertmanager_url == "http://alertmanager:9093"


# --- the published schema: docs/config.schema.json ------------------------------------------------

def schema_errors(data):
    validator = jsonschema.Draft202012Validator(config_schema())
    return list(validator.iter_errors(data))


def readme_configs():
    """The README's YAML examples of a proxy config (those with listen, upstream or routes)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", readme, re.S | re.M)]
    return [b for b in blocks if isinstance(b, dict) and {"listen", "upstream", "routes"} & set(b)]


def test_the_published_schema_is_the_one_the_config_declares():
    committed = (ROOT / "docs" / "config.schema.json").read_text(encoding="utf-8")
    assert committed == render_config_schema(), \
        "docs/config.schema.json is stale: regenerate it from proxy.config.render_config_schema()"


def test_the_schema_is_valid_json_schema_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(config_schema())


def test_the_schema_and_the_proxy_accept_the_shipped_compose_config():
    data = yaml.safe_load((ROOT / "compose" / "proxy" / "proxy.yaml").read_text(encoding="utf-8"))
    assert schema_errors(data) == []
    parse_config(data, environ={})


def test_the_schema_and_the_proxy_accept_the_configs_the_readme_shows():
    configs = readme_configs()
    assert configs, "the README shows no proxy config"
    for data in configs:
        assert schema_errors(data) == [], data
        parse_config(data, environ={})


def test_the_schema_and_the_proxy_accept_an_empty_file_and_every_section_set_to_null():
    for data in (None, {}, {"timeouts": None, "routes": None, "models": {"m": None}, "admission": None,
                            "admin": None, "auth": None, "state_file": None, "listen": None}):
        assert schema_errors(data) == []
        parse_config(data, environ={})


REFUSED = [
    ({"typo_key": 1}, "typo_key"),
    ({"timeouts": {"bogus": 1}}, "timeouts.bogus"),
    ({"routes": {"chat": {"stable": "a", "canary": "b", "canary_weight": 150}}}, "routes.chat.canary_weight"),
    ({"routes": {"chat": {"stable": "a", "canary_weight": 10}}}, "routes.chat.canary_weight"),
    ({"routes": {"chat": {"canary": "b"}}}, "routes.chat.stable"),
    ({"routes": {"chat": {"stable": "a", "breaker": {"min_requests": 0}}}}, "routes.chat.breaker.min_requests"),
    ({"max_body_bytes": "big"}, "max_body_bytes"),
    ({"max_body_bytes": True}, "max_body_bytes"),
    ({"session_label_cap": 1.5}, "session_label_cap"),
    ({"timeouts": {"idle": 0}}, "timeouts.idle"),
    ({"session_sources": ["cookie:x"]}, "session_sources[0]"),
    ({"session_sources": []}, "session_sources"),
    ({"listen": "127.0.0.1"}, "listen"),
    ({"listen": "h:70000"}, "listen"),
    ({"upstream": "ftp://gpu1"}, "upstream"),
    ({"models": {"m": {"upstream": " "}}}, "models.m.upstream"),
    ({"auth": {"api_keys": ["k", ""]}}, "auth.api_keys[1]"),
    ({"access_log": "yes"}, "access_log"),
]


@pytest.mark.parametrize("data, key", REFUSED)
def test_the_schema_refuses_what_the_proxy_refuses_at_the_same_key(data, key):
    with pytest.raises(ConfigError) as exc:
        parse_config(data, environ={})
    assert exc.value.key == key
    errors = schema_errors(data)
    assert errors, f"the schema accepts {data}"
    paths = {"".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".")
             for e in errors}
    assert any(key == path or key.startswith(path + ".") or key.startswith(path + "[") or not path
               for path in paths), (key, paths)  # refused at the key, or at a mapping that holds it


def test_the_schema_means_the_same_to_editors_that_only_know_draft_7():
    """yaml-language-server validates with draft 7: the schema uses only keywords that mean
    the same there, so it accepts and refuses the same files."""
    jsonschema.Draft7Validator.check_schema(config_schema())
    draft7 = jsonschema.Draft7Validator(config_schema())
    for data, _ in REFUSED:
        assert not draft7.is_valid(data), data
    for data in [yaml.safe_load((ROOT / "compose" / "proxy" / "proxy.yaml").read_text()), *readme_configs()]:
        assert draft7.is_valid(data), data


def test_the_schema_shows_the_defaults_the_proxy_uses():
    cfg = parse_config({}, environ={})
    properties = config_schema()["properties"]
    for name, prop in properties.items():
        if "default" in prop:
            value = getattr(cfg, name)
            assert (list(value) if isinstance(value, tuple) else value) == prop["default"], name
    for section in ("timeouts", "admission"):
        for name, prop in properties[section]["properties"].items():
            assert getattr(getattr(cfg, section), name) == prop["default"], f"{section}.{name}"


def test_a_flag_for_an_unknown_setting_is_refused():
    with pytest.raises(ConfigError, match="^bogus: unknown setting"):
        parse_config({}, environ={}, overrides={"bogus": 1})


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9101", ("127.0.0.1", 9101)),
    ("[::1]:9101", ("::1", 9101)),
    (":9101", ("127.0.0.1", 9101)),  # no host given: loopback, never every interface
    ("0.0.0.0:11435", ("0.0.0.0", 11435)),
    ("exporter.internal:0", ("exporter.internal", 0)),
])
def test_listen_addresses_are_read_alike_by_every_command(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9101", "host:", "host:port", "::1:9101", "h:70000"])
def test_bad_listen_addresses_are_refused(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)
    with pytest.raises(ConfigError, match="^listen:"):
        parse_config({"listen": text}, environ={})


# --- decisions: one vocabulary of statistical settings ------------------------------------------

def test_decisions_section_sets_the_breakers_sequential_defaults_unless_a_route_overrides_them():
    config = parse_config({"decisions": {"alpha": 0.01, "sequential": {"rate_ratio": 4, "floor": None}},
                           "routes": {"a": {"stable": "m", "canary": "c", "breaker": {"min_requests": 5}},
                                      "b": {"stable": "m", "canary": "c", "breaker": {"rate_ratio": 8}}}},
                          environ={})
    assert config.decisions.alpha == 0.01 and config.decisions.failure_margin == 0.02
    a, b = config.routes["a"].breaker, config.routes["b"].breaker
    assert (a.rate_ratio, a.alpha, a.floor) == (4.0, 2e-5, None)
    assert (b.rate_ratio, b.floor) == (8.0, None)


@pytest.mark.parametrize("decisions,message", [
    ({"ttft_slo": 3}, "decisions.ttft_slo: 3 is not a bucket bound"),
    ({"alpha": 0.7}, "decisions.alpha: must be at most 0.5"),
    ({"min_failures": 2.5}, "decisions.min_failures"),
    ({"sequential": {"floor": 1}}, "decisions.sequential.floor: must be at most 0"),
    ({"margin": 0.1}, "decisions.margin"),
])
def test_a_bad_decision_setting_is_refused_naming_its_key(decisions, message):
    with pytest.raises(ConfigError) as info:
        parse_config({"decisions": decisions}, environ={})
    assert message in str(info.value)


def test_a_null_floor_means_walds_plain_test_not_the_default():
    config = parse_config({"routes": {"a": {"stable": "m", "canary": "c", "breaker": {"floor": None}}}}, environ={})
    assert config.routes["a"].breaker.floor is None
    assert parse_config({"routes": {"a": {"stable": "m", "canary": "c", "breaker": {}}}},
                        environ={}).routes["a"].breaker.floor == -4.6
