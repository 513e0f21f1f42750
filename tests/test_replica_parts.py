"""The replicas' parts on their own: the ``state:`` config, the journal, replaying it,
and the compare-and-set write against a real Redis."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from proxy.config import ConfigError, parse_config
from proxy.control.routing import RouteState
from proxy.replicas.journal import Journal
from proxy.replicas.replica import effect_of
from proxy.replicas.store import Conflict, Store, connect
from tests.redis_server import RedisServer

ROUTES = {"chat": {"stable": "llama3:8b", "canary": "qwen2:7b", "canary_weight": 50}}


# --- config --------------------------------------------------------------------------------------------

def test_state_as_a_url_or_a_section_and_the_password_never_in_the_url_shown():
    short = parse_config({"state": "redis://:pw@cache:6380/3"}, environ={}).shared_state
    assert (short.url, short.password, short.key_prefix) == ("redis://cache:6380/3", "pw", "ollama-sidecar:")
    full = parse_config({"state": {"url": "rediss://cache", "key_prefix": "team-a:", "lease": "30s",
                                   "journal": "/var/lib/j.jsonl"}}, environ={}).shared_state
    assert (full.url, full.lease, full.journal) == ("rediss://cache:6379/0", 30.0, "/var/lib/j.jsonl")
    assert "pw" not in repr(short)
    encoded = parse_config({"state": "redis://:p%40ss%3Aw@cache"}, environ={}).shared_state
    assert encoded.password == "p@ss:w"
    options = parse_config({"state": "rediss://cache:6380/1?ssl_ca_certs=/etc/redis/ca.pem&password=q"},
                           environ={}).shared_state
    assert (options.url, options.password) == ("rediss://cache:6380/1?ssl_ca_certs=%2Fetc%2Fredis%2Fca.pem", "q")


def test_a_url_that_is_not_redis_is_refused_without_quoting_it():
    with pytest.raises(ConfigError) as err:
        parse_config({"state": "cache.internal:6379?password=hunter2"}, environ={})
    assert "hunter2" not in str(err.value)


def test_the_password_from_the_environment_or_a_file(tmp_path):
    assert parse_config({"state": "redis://cache"}, environ={"OLLAMA_SIDECAR_REDIS_PASSWORD": "env-pw"}
                        ).shared_state.password == "env-pw"
    secret = tmp_path / "redis-password"
    secret.write_text("file-pw\n")
    assert parse_config({"state": "redis://cache"}, environ={"OLLAMA_SIDECAR_REDIS_PASSWORD_FILE": str(secret)}
                        ).shared_state.password == "file-pw"
    assert parse_config({"state": "redis://:url-pw@cache"}, environ={"OLLAMA_SIDECAR_REDIS_PASSWORD": "env-pw"}
                        ).shared_state.password == "url-pw"


@pytest.mark.parametrize("settings, message", [
    ({"state": "redis://cache", "state_file": "/tmp/s.json"}, "not both"),
    ({"state": "http://cache:6379"}, "must start with redis:// or rediss://"),
    ({"state": "redis://:6379/0"}, "has no host"),
    ({"state": "redis://cache/zero"}, "database must be a number"),
    ({"state": {"key_prefix": "x:"}}, "state.url: is required"),
    ({"state": {"url": "redis://cache", "lease": "0.1s"}}, "state.lease"),
    ({"state": {"url": "redis://cache", "nope": 1}}, "state.nope: unknown setting"),
])
def test_bad_state_settings_name_their_key(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("/", "/")):
        parse_config(settings, environ={})


# --- the journal ---------------------------------------------------------------------------------------

def test_the_journal_survives_a_line_cut_by_a_crash_and_keeps_what_came_after_a_replay(tmp_path):
    journal = Journal(str(tmp_path / "j" / "journal.jsonl"))
    assert journal.append([{"op": "rollback", "route": "chat", "reason": "alert:X"}])
    with open(journal.path, "a") as f:
        f.write('{"op": "rollb')  # a crash mid-write
    entries, lines = journal.entries()
    assert [e["reason"] for e in entries] == ["alert:X"] and lines == 2
    with open(journal.path, "a") as f:
        f.write("\n")
    journal.append([{"op": "rollback", "route": "chat", "reason": "breaker"}])  # arrives during the replay
    journal.clear(lines)
    assert [e["reason"] for e in journal.entries()[0]] == ["breaker"]
    assert oct(journal.path.stat().st_mode & 0o777) == "0o600"


def test_without_a_path_nothing_is_durable(tmp_path):
    assert Journal(None).append([{"op": "rollback", "route": "chat"}]) is False
    assert Journal(None).entries() == ([], 0)


def test_only_rollbacks_and_auto_resumes_are_journaled():
    before = RouteState("chat", "a", "b", 50.0)
    rolled = replace(before, rolled_back=True, weight=0.0, reason="alert:X")
    assert effect_of(before, rolled, 1.0) == {"op": "rollback", "route": "chat", "reason": "alert:X", "at": 1.0}
    resumed = replace(rolled, rolled_back=False, weight=5.0, probe_weight_after=50.0)
    assert effect_of(rolled, resumed, 2.0) == {"op": "resume", "route": "chat", "undoes": "alert:X", "probe": True,
                                              "at": 2.0}
    assert effect_of(before, replace(before, weight=10.0), 3.0) is None


# --- compare-and-set on a real Redis ----------------------------------------------------------------------

def test_a_write_made_on_a_stale_rev_is_refused_whole(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        cfg = parse_config({"state": server.url}, environ={}).shared_state

        async def scenario() -> None:
            store = Store(connect(cfg), "t:")
            try:
                revs = await store.write_routes({"a": (0, {"v": 1}), "b": (0, {"v": 1})}, [("fp@t", 1.0)], 10)
                assert revs == {"a": 1, "b": 1}
                with pytest.raises(Conflict) as stale:  # b was read at rev 0, it is at 1 now
                    await store.write_routes({"a": (1, {"v": 2}), "b": (0, {"v": 2})}, [], 10)
                assert str(stale.value) == "b"
                rows = await store.read_routes(["a", "b", "c"])
                assert rows == {"a": (1, {"v": 1}), "b": (1, {"v": 1}), "c": (0, None)}  # neither written
                assert await store.acted_alerts(10) == ["fp@t"]
            finally:
                await store.redis.aclose()

        asyncio.run(scenario())
        assert json.loads(server.client().hget("t:route:a", "doc")) == {"v": 1}
    finally:
        server.stop()
