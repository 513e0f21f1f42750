"""Config reload (proxy/control/reload.py) without a server: a new file is validated whole
before anything changes, a bad one is refused with the key that is wrong and the old
config kept, and the watcher notices edits and outlives bad files. Reload through a
running proxy (the admin API, SIGHUP, the token rotating) is in test_control_plane.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
import yaml

from proxy.config import ProxyConfig, load_config
from proxy.control.reload import ConfigReloader

ROUTE = {"stable": "qwen3:8b", "canary": "qwen3:8b-ft", "canary_weight": 50}
BASE = {"upstream": "http://ollama:11434", "routes": {"chat": ROUTE}}


class Harness:
    """A reloader over ``tmp_path/proxy.yaml`` that records what it applied and reported."""

    def __init__(self, tmp_path, settings: dict[str, Any] = BASE, overrides: dict[str, Any] | None = None) -> None:
        self.path = tmp_path / "proxy.yaml"
        self.write(settings)
        self.config = load_config(str(self.path), overrides=overrides)  # the environment, as reload reads it
        self.applied: list[tuple[ProxyConfig, ProxyConfig]] = []
        self.results: list[tuple[bool, str | None]] = []
        self.changed = asyncio.Event()
        self.reloader = ConfigReloader(str(self.path), overrides or {}, lambda: self.config, self._apply,
                                       self._result)

    def write(self, settings: dict[str, Any]) -> None:
        self.path.write_text(yaml.safe_dump(settings))

    def _apply(self, new: ProxyConfig, old: ProxyConfig) -> None:
        self.applied.append((new, old))
        self.config = new

    def _result(self, ok: bool, error: str | None) -> None:
        self.results.append((ok, error))
        self.changed.set()

    async def next_result(self, timeout: float = 5.0) -> tuple[bool, str | None]:
        """The watcher's next reload outcome (waits for it, not for a fixed time)."""
        await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()
        return self.results[-1]


class LogSeen(logging.Handler):
    """Sets ``seen`` when ``logger`` logs a message containing ``fragment``."""

    def __init__(self, logger: str, fragment: str) -> None:
        super().__init__()
        self.logger = logging.getLogger(logger)
        self.fragment = fragment
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.fragment in record.getMessage():
            self.seen.set()

    def __enter__(self) -> "LogSeen":
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def weight(config: ProxyConfig) -> float:
    return config.routes["chat"].canary_weight


def test_a_valid_file_is_applied_and_reported(tmp_path):
    h = Harness(tmp_path)
    h.write(dict(BASE, routes={"chat": dict(ROUTE, canary_weight=70)}))
    assert h.reloader.reload() == (True, "reloaded")
    (new, old), = h.applied
    assert (weight(new), weight(old)) == (70, 50)
    assert h.results == [(True, None)]


@pytest.mark.parametrize("content, key", [
    ("routes:\n  chat:\n    stable: a\n    canary_weight: 10\n", "routes.chat.canary_weight"),
    ("routes: [\n", "not valid YAML"),
    ("lisen: 127.0.0.1:1\n", "lisen"),
])
def test_an_invalid_file_is_refused_naming_the_problem_and_the_old_config_stays(tmp_path, caplog, content, key):
    h = Harness(tmp_path)
    h.path.write_text(content)
    ok, message = h.reloader.reload()
    assert not ok and "old config kept" in message and key in message
    assert h.applied == [] and weight(h.config) == 50
    assert h.results[-1][0] is False and key in h.results[-1][1]
    assert "config reload rejected" in caplog.text


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    h = Harness(tmp_path)
    h.path.write_bytes(b"# mod\xe8le\nroutes: {}\n")
    ok, message = h.reloader.reload()
    assert not ok and "not UTF-8" in message and h.applied == []


def test_an_unexpected_error_is_a_refused_reload_not_a_crash(tmp_path, monkeypatch):
    h = Harness(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr("proxy.control.reload.load_config", broken)
    assert h.reloader.reload() == (False, "config reload rejected, old config kept: RuntimeError: bug")
    assert h.results == [(False, "RuntimeError: bug")]


def test_command_line_flags_still_win_after_a_reload(tmp_path):
    h = Harness(tmp_path, overrides={"upstream": "http://flag:11434"})
    h.write(dict(BASE, upstream="http://file:11434", routes={"chat": dict(ROUTE, canary_weight=5)}))
    assert h.reloader.reload()[0]
    assert h.config.upstream == "http://flag:11434" and weight(h.config) == 5


def test_settings_that_need_a_restart_are_applied_later_and_the_log_says_so(tmp_path, caplog):
    h = Harness(tmp_path)
    h.write(dict(BASE, listen="127.0.0.1:9999", session_label_cap=5))
    assert h.reloader.reload()[0]
    assert "listen changed; it takes effect at the next restart" in caplog.text
    assert "session_label_cap changed; it takes effect at the next restart" in caplog.text


def test_a_rotated_admin_token_is_announced_but_never_logged(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("OLLAMA_SIDECAR_ADMIN_TOKEN", raising=False)  # it would outrank the file
    token = tmp_path / "token"
    token.write_text("first\n")
    h = Harness(tmp_path, dict(BASE, admin={"token_file": str(token)}))
    token.write_text("second\n")
    assert h.reloader.reload()[0]
    assert h.config.admin_token == "second"
    assert "the admin token changed" in caplog.text
    assert "first" not in caplog.text and "second" not in caplog.text


async def test_the_watcher_reloads_an_edited_file_and_outlives_a_bad_one(tmp_path):
    h = Harness(tmp_path)
    watcher = asyncio.create_task(h.reloader.watch(0.01))
    try:
        h.write(dict(BASE, routes={"chat": dict(ROUTE, canary_weight=70.5)}))
        assert await h.next_result() == (True, None) and weight(h.config) == 70.5
        h.path.write_text("routes: [\n")
        ok, _ = await h.next_result()
        assert not ok and weight(h.config) == 70.5
        h.write(dict(BASE, routes={"chat": dict(ROUTE, canary_weight=9)}))
        assert await h.next_result() == (True, None) and weight(h.config) == 9
    finally:
        await stop(watcher)


async def test_a_deleted_file_keeps_the_config_in_force_until_it_comes_back(tmp_path):
    h = Harness(tmp_path)
    with LogSeen("ollama_sidecar.reload", "disappeared") as log:
        watcher = asyncio.create_task(h.reloader.watch(0.01))
        try:
            h.path.unlink()
            await asyncio.wait_for(log.seen.wait(), 5)
            assert h.results == [] and weight(h.config) == 50
            h.write(dict(BASE, routes={"chat": dict(ROUTE, canary_weight=3)}))
            assert await h.next_result() == (True, None) and weight(h.config) == 3
        finally:
            await stop(watcher)
