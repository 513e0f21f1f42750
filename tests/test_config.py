"""Configuration: precedence, OLLAMA_HOST as Ollama reads it, errors that name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy.config import ConfigError, load_config, parse_config
from proxy.common.listen import parse_listen
from proxy.common.ollama_host import parse_ollama_host


@pytest.mark.parametrize("value,url", [
    ("", "http://127.0.0.1:11434"), ("gpu1", "http://gpu1:11434"), ("gpu1:8080", "http://gpu1:8080"),
    ("http://gpu1", "http://gpu1:80"), ("https://gpu1", "https://gpu1:443"), ("0.0.0.0", "http://127.0.0.1:11434"),
    ("0.0.0.0:9999", "http://127.0.0.1:9999"), ("[::1]:5000", "http://[::1]:5000"),
    ("http://h:1/ollama/", "http://h:1/ollama"),
])
def test_ollama_host_is_read_like_ollama_does(value, url):
    assert parse_ollama_host(value) == url


def test_precedence_flag_env_file_default(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("listen: 127.0.0.1:1\nupstream: http://file:1\n")
    env = {"OLLAMA_HOST": "envhost", "OLLAMA_SIDECAR_LISTEN": "127.0.0.1:2"}
    assert load_config(str(f), environ=env).upstream == "http://file:1"
    assert load_config(str(f), environ=env, overrides={"upstream": "flag:3"}).upstream == "http://flag:3"
    assert parse_config({}, environ=env).upstream == "http://envhost:11434"
    assert parse_config({}, environ=env).listen == "127.0.0.1:2"
    assert parse_config({}, environ={}).listen == "127.0.0.1:11435"


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
    cfg = load_config("compose/proxy.yaml", environ={"OLLAMA_SIDECAR_ADMIN_TOKEN_FILE": str(token)})
    assert cfg.listen == "0.0.0.0:11435" and cfg.upstream == "http://ollama:11434"
    assert cfg.routes["chat"].canary and cfg.alertmanager_url == "http://alertmanager:9093"


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


def test_every_error_type_is_documented():
    from pathlib import Path

    from proxy.metrics import ERROR_TYPES, SERVER_SIDE_ERRORS
    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    table = doc.split("### error_type", 1)[1].split("###", 1)[0]
    assert {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")} == set(ERROR_TYPES)
    assert SERVER_SIDE_ERRORS <= set(ERROR_TYPES)
