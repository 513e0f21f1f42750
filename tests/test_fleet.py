"""The balancer and the servers' health (proxy/fleet/) without sockets: each rule of the
choice, rendezvous affinity, health checks, outlier ejection with doubling backoff."""

from __future__ import annotations

from proxy.config import UpstreamServer, parse_config
from proxy.fleet.balancer import AFFINITY, COLD, LOADED, SATURATED, choose
from proxy.fleet.fleet import Fleet
from proxy.fleet.servers import BACKOFF_MAX, BACKOFF_MIN, Loaded, Server
from proxy.metrics import ProxyMetrics
from tests.conftest import FakeClock

M = "qwen3:32b"


def server(name: str, *, installed=(M,), loaded=(), in_flight=0, parallel=1, clock=None) -> Server:
    s = Server(UpstreamServer(name, f"http://{name}:11434", parallel), clock or FakeClock())
    s.installed = frozenset(installed)
    s.loaded = {m: Loaded() for m in loaded}
    if in_flight:
        s.in_flight[M] = in_flight
    return s


def names(choice) -> list[str]:
    return [s.name for s in choice.servers]


def test_a_server_where_the_model_is_loaded_comes_first():
    a, b = server("a"), server("b", loaded=(M,))
    choice = choose([a, b], M, None, embedding=False)
    assert names(choice) == ["b", "a"] and choice.reason == LOADED


def test_among_cold_servers_one_that_evicts_nothing_comes_first():
    busy, empty = server("a", loaded=("other:7b",)), server("b")
    choice = choose([busy, empty], M, None, embedding=False)
    assert names(choice) == ["b", "a"] and choice.reason == COLD


def test_then_the_least_saturated_counting_its_parallel_slots():
    a = server("a", loaded=(M,), in_flight=2, parallel=4)  # half full
    b = server("b", loaded=(M,), in_flight=1, parallel=1)  # full
    assert names(choose([a, b], M, None, embedding=False))[0] == "a"
    # an embedding model has one slot whatever `parallel` says
    assert choose([a, b], M, None, embedding=True).servers[0].name in ("a", "b")
    assert a.saturation(M, embedding=True) == 2.0


def test_a_session_stays_on_its_server_and_a_new_server_moves_only_its_own_sessions():
    servers = [server(n, loaded=(M,)) for n in ("a", "b", "c")]
    sessions = [f"user-{i}" for i in range(600)]
    before = {s: choose(servers, M, s, embedding=False).servers[0].name for s in sessions}
    assert set(before.values()) == {"a", "b", "c"}  # spread
    assert all(choose(servers, M, s, embedding=False).servers[0].name == before[s] for s in sessions)  # sticky
    grown = servers + [server("d", loaded=(M,))]
    after = {s: choose(grown, M, s, embedding=False).servers[0].name for s in sessions}
    moved = {s for s in sessions if after[s] != before[s]}
    assert moved and all(after[s] == "d" for s in moved)  # only to the new server
    assert 100 < len(moved) < 200  # about a quarter


def test_a_saturated_affinity_server_is_left_for_a_free_one():
    a, b = server("a", loaded=(M,), in_flight=1), server("b", loaded=(M,))
    sessions = [f"s{i}" for i in range(50)]
    assert all(choose([a, b], M, s, embedding=False).servers[0].name == "b" for s in sessions)
    b.in_flight[M] = 1
    choice = choose([a, b], M, "s1", embedding=False)
    assert choice.reason == SATURATED


def test_affinity_is_reported_when_it_overrides_the_order():
    a, b = server("a", loaded=(M,)), server("b", loaded=(M,))
    reasons = {choose([a, b], M, f"s{i}", embedding=False).reason for i in range(50)}
    assert reasons == {LOADED, AFFINITY}


def test_unhealthy_servers_are_skipped_unless_every_one_is_down():
    clock = FakeClock()
    a, b = server("a", loaded=(M,), clock=clock), server("b", clock=clock)
    a.checked_up = False
    choice = choose([a, b], M, None, embedding=False)
    assert names(choice) == ["b"] and not choice.all_down
    b.failure(connect=True)  # ejected too: both down, both tried anyway
    choice = choose([a, b], M, None, embedding=False)
    assert set(names(choice)) == {"a", "b"} and choice.all_down


def test_health_goes_down_after_two_failed_checks_and_up_after_two_passed():
    s = server("a")
    assert s.check_result(False) is None and s.up
    assert s.check_result(False) is False and not s.up
    assert s.check_result(True) is None and not s.up
    assert s.check_result(True) is True and s.up


def test_ejection_backoff_doubles_from_30s_to_5min_and_resets_after_a_success():
    clock = FakeClock()
    s = server("a", clock=clock)
    assert s.failure(connect=False) is False and s.failure(connect=False) is False
    assert s.failure(connect=False) is True  # three server errors in a row
    assert s.ejected and s.ejected_until - clock.now == BACKOFF_MIN
    for expected in (60, 120, 240, BACKOFF_MAX, BACKOFF_MAX):
        clock.advance(1000)
        assert s.failure(connect=True) is True  # a refused connection ejects at once
        assert s.ejected_until - clock.now == expected
    clock.advance(1000)
    s.success()
    assert s.backoff == BACKOFF_MIN


def test_the_fleet_serves_a_model_from_its_pinned_servers_only():
    config = parse_config({"upstreams": {"gpu1": {"url": "http://gpu1:11434"}, "gpu2": {"url": "http://gpu2:11434"}},
                           "models": {M: {"upstreams": ["gpu2"]}}}, environ={})
    fleet = Fleet(config, ProxyMetrics())
    for s in fleet.servers.values():
        s.installed = frozenset({M, "llama3.2:latest"})
    assert [s.name for s in fleet.eligible(M)] == ["gpu2"]
    assert {s.name for s in fleet.eligible("llama3.2")} == {"gpu1", "gpu2"}  # canonical name
    assert fleet.choose("nowhere:1b", None, embedding=False) is None


def test_a_reload_keeps_what_is_known_of_kept_servers_and_forgets_removed_ones():
    two = parse_config({"upstreams": {"gpu1": {"url": "http://gpu1:11434"}, "gpu2": {"url": "http://gpu2:11434"}}},
                       environ={})
    metrics = ProxyMetrics()
    fleet = Fleet(two, metrics)
    fleet.servers["gpu1"].installed = frozenset({M})
    one = parse_config({"upstreams": {"gpu1": {"url": "http://gpu1:11434", "parallel": 4},
                                      "gpu3": {"url": "http://gpu3:11434"}}}, environ={})
    fleet.update_config(one)
    assert set(fleet.servers) == {"gpu1", "gpu3"}
    assert fleet.servers["gpu1"].installed == frozenset({M}) and fleet.servers["gpu1"].config.parallel == 4
    assert metrics.registry.get_sample_value("ollama_proxy_upstream_up", {"upstream": "gpu2"}) is None
    assert metrics.registry.get_sample_value("ollama_proxy_upstream_up", {"upstream": "gpu3"}) == 1
