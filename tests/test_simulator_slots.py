"""The simulator schedules like Ollama (server/sched.go): ``parallel`` slots per loaded
model (one for an embedding model), a FIFO queue behind them, and once ``max_queue``
requests wait, an immediate 503 with Ollama's exact body on both API families.

No clocks: requests are held open on raw sockets (a slow stream, or a hanging model that
keeps its slot until the client leaves) and the tests read the simulator's own counts.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import subprocess
import sys
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest
import requests

from proxy.simulator import get_stats, reset, running_simulator, set_profile, set_scheduler
from proxy.simulator.scheduler import BUSY_MESSAGE, Scheduler, ServerBusy
from tests.conftest import wait_for

FAST = {"ttft_seconds": 0.001, "tokens_per_second": 2000.0, "output_tokens": 6, "cold_load_seconds": 0.0,
        "keep_alive_seconds": -1}
PROFILES = {
    "slow:latest": {**FAST, "tokens_per_second": 1.0, "output_tokens": 100_000},  # streams for a day
    "stuck:latest": {**FAST, "hang_rate": 1.0},  # holds its slot until the client leaves
    "fast:latest": FAST,
    "embedder:latest": {**FAST, "kind": "embedding", "embedding_dim": 8},
}
PARALLEL = 2
NATIVE_BUSY = '{"error":"server busy, please try again.  maximum pending requests exceeded"}'
OPENAI_BUSY = ('{"error":{"message":"server busy, please try again.  maximum pending requests exceeded",'
               '"type":"api_error","param":null,"code":null}}')


@pytest.fixture(scope="module")
def sim():
    with running_simulator(profiles=PROFILES, seed=3, parallel=PARALLEL) as running:
        yield running


@pytest.fixture
def url(sim):
    reset(sim.url)
    yield sim.url
    reset(sim.url)


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


class Held:
    """One request on its own socket, left open until ``close`` (which cancels it)."""

    def __init__(self, url: str, path: str, body: dict) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n")
        self.sock.sendall(head.encode() + data)

    def answered(self) -> bool:
        """Whether any byte of a reply arrived yet (without waiting)."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def status(self) -> int:
        """Wait (up to the socket timeout) for the status line; the stream stays open."""
        line = b""
        while not line.endswith(b"\r\n"):
            line += self.sock.recv(1)
        return int(line.split()[1])

    def close(self) -> None:
        self.sock.close()


def hold(stack: ExitStack, url: str, path: str, body: dict) -> Held:
    held = Held(url, path, body)
    stack.callback(held.close)
    return held


def scheduled(url: str, model: str) -> dict:
    """The simulator's view of ``model``: slots, in_flight, queued, busy (503s)."""
    return get_stats(url)["scheduler"]["models"].get(model, {"in_flight": 0, "queued": 0})


def until(url: str, model: str, **expected: int) -> None:
    def matches() -> bool:
        view = scheduled(url, model)
        return all(view.get(key) == value for key, value in expected.items())

    wait_for(matches, 5, f"{model} to reach {expected} (now {scheduled(url, model)})", interval=0.01)


# --- slots and the queue -----------------------------------------------------------------
def test_a_request_past_the_slots_waits_and_the_queue_is_first_come_first_served(url):
    with ExitStack() as stack:
        first = [hold(stack, url, "/api/chat", chat("slow:latest")) for _ in range(PARALLEL)]
        assert [held.status() for held in first] == [200] * PARALLEL  # both streaming: both in a slot
        early = hold(stack, url, "/api/chat", chat("slow:latest"))
        until(url, "slow:latest", in_flight=PARALLEL, queued=1)
        late = hold(stack, url, "/v1/chat/completions", chat("slow:latest", stream=True))
        until(url, "slow:latest", in_flight=PARALLEL, queued=2)
        assert not early.answered() and not late.answered()
        assert scheduled(url, "slow:latest")["slots"] == PARALLEL

        first[0].close()  # a slot frees: the earlier waiter takes it, the later keeps waiting
        assert early.status() == 200
        until(url, "slow:latest", in_flight=PARALLEL, queued=1)
        assert not late.answered()

        first[1].close()
        assert late.status() == 200
        until(url, "slow:latest", in_flight=PARALLEL, queued=0)
    until(url, "slow:latest", in_flight=0, queued=0)
    assert get_stats(url)["scheduler"]["busy"] == 0


def test_slots_are_per_model(url):
    with ExitStack() as stack:
        for _ in range(PARALLEL):
            hold(stack, url, "/api/chat", chat("stuck:latest"))
        until(url, "stuck:latest", in_flight=PARALLEL)
        reply = requests.post(url + "/api/chat", json=chat("fast:latest", stream=False), timeout=5)
        assert reply.status_code == 200 and reply.json()["done"] is True


def test_a_client_that_leaves_the_queue_gives_its_place_back(url):
    with ExitStack() as stack:
        holders = [hold(stack, url, "/api/generate", {"model": "slow:latest", "prompt": "hi"}) for _ in range(PARALLEL)]
        assert [held.status() for held in holders] == [200] * PARALLEL
        leaver = hold(stack, url, "/api/generate", {"model": "slow:latest", "prompt": "hi"})
        until(url, "slow:latest", queued=1)
        leaver.close()
        until(url, "slow:latest", in_flight=PARALLEL, queued=0)
        assert get_stats(url)["requests"]["slow:latest"] == {"cancelled": 1}
    until(url, "slow:latest", in_flight=0, queued=0)
    assert get_stats(url)["requests"]["slow:latest"] == {"cancelled": 1 + PARALLEL}


def test_requests_waiting_for_a_cold_load_are_queued(url):
    set_profile(url, "fast:latest", cold_load_seconds=3600.0)
    with ExitStack() as stack:
        for _ in range(3):
            hold(stack, url, "/api/chat", chat("fast:latest"))
        until(url, "fast:latest", in_flight=0, queued=3)  # all three wait on the one load
    until(url, "fast:latest", queued=0)


# --- 503 when the queue is full ------------------------------------------------------------
@pytest.mark.parametrize("path, body, expected", [
    ("/api/chat", chat("stuck:latest"), NATIVE_BUSY),
    ("/api/generate", {"model": "stuck:latest", "prompt": "hi", "stream": False}, NATIVE_BUSY),
    ("/api/embed", {"model": "embedder:latest", "input": "hi"}, NATIVE_BUSY),
    ("/api/embeddings", {"model": "embedder:latest", "prompt": "hi"}, NATIVE_BUSY),
    ("/v1/chat/completions", chat("stuck:latest", stream=True), OPENAI_BUSY),
    ("/v1/completions", {"model": "stuck:latest", "prompt": "hi"}, OPENAI_BUSY),
    ("/v1/embeddings", {"model": "embedder:latest", "input": "hi"}, OPENAI_BUSY),
])
def test_a_full_queue_answers_503_at_once_with_ollamas_body(url, path, body, expected):
    set_scheduler(url, parallel=1, max_queue=1)
    requests.post(url + "/api/embed", json={"model": "embedder:latest", "input": "warm"}, timeout=5)
    set_profile(url, "embedder:latest", hang_rate=1.0)
    with ExitStack() as stack:
        hold(stack, url, "/api/chat", chat("stuck:latest"))
        hold(stack, url, "/api/embed", {"model": "embedder:latest", "input": "x"})
        until(url, "stuck:latest", in_flight=1)
        until(url, "embedder:latest", in_flight=1)
        hold(stack, url, "/api/chat", chat("stuck:latest"))
        until(url, "stuck:latest", queued=1)  # the queue (server-wide) is now full
        model = body["model"]
        before = scheduled(url, model)["busy"]
        reply = requests.post(url + path, json=body, timeout=5)
        assert (reply.status_code, reply.text) == (503, expected)
        assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
        assert expected.count(BUSY_MESSAGE) == 1
        stats = get_stats(url)
        assert stats["scheduler"]["busy"] == 1 and stats["scheduler"]["models"][model]["busy"] == before + 1
        assert stats["requests"][model]["busy"] == 1
        assert scheduled(url, "stuck:latest")["queued"] == 1  # the 503 took no place


def test_the_503_counter_counts_every_refusal_and_reset_clears_it(url):
    set_scheduler(url, parallel=1, max_queue=0)
    with ExitStack() as stack:
        hold(stack, url, "/api/chat", chat("stuck:latest"))
        until(url, "stuck:latest", in_flight=1)
        codes = [requests.post(url + "/api/chat", json=chat("stuck:latest"), timeout=5).status_code for _ in range(3)]
        assert codes == [503, 503, 503]
        assert get_stats(url)["scheduler"]["busy"] == 3
    reset(url)
    assert get_stats(url)["scheduler"]["busy"] == 0


# --- the control API -----------------------------------------------------------------------
def test_control_api_reads_and_changes_the_limits(url):
    assert requests.get(url + "/_simulator/scheduler", timeout=5).json() == {"parallel": PARALLEL, "max_queue": 512}
    assert set_scheduler(url, parallel=1, max_queue=0) == {"parallel": 1, "max_queue": 0}
    with ExitStack() as stack:
        hold(stack, url, "/api/chat", chat("stuck:latest"))
        until(url, "stuck:latest", in_flight=1)
        assert requests.post(url + "/api/chat", json=chat("stuck:latest"), timeout=5).status_code == 503

        assert set_scheduler(url, max_queue=1) == {"parallel": 1, "max_queue": 1}
        running = hold(stack, url, "/api/chat", chat("slow:latest"))
        assert running.status() == 200
        waiter = hold(stack, url, "/api/chat", chat("slow:latest"))
        until(url, "slow:latest", in_flight=1, queued=1)
        assert not waiter.answered()

        assert set_scheduler(url, parallel=2)["parallel"] == 2  # more slots start the waiter at once
        assert waiter.status() == 200
        until(url, "slow:latest", in_flight=2, queued=0)
        assert set_scheduler(url, parallel=None) == {"parallel": None, "max_queue": 1}
    stats = get_stats(url)["scheduler"]
    assert (stats["parallel"], stats["max_queue"]) == (None, 1)
    reset(url)
    assert requests.get(url + "/_simulator/scheduler", timeout=5).json() == {"parallel": PARALLEL, "max_queue": 512}


@pytest.mark.parametrize("body", [{"parallel": 0}, {"parallel": "2"}, {"parallel": True}, {"max_queue": -1},
                                  {"max_queue": None}, {"slots": 2}, {}, []])
def test_control_api_refuses_bad_limits(url, body):
    reply = requests.patch(url + "/_simulator/scheduler", json=body, timeout=5)
    assert reply.status_code == 400 and reply.json()["error"]
    assert requests.get(url + "/_simulator/scheduler", timeout=5).json() == {"parallel": PARALLEL, "max_queue": 512}


# --- embedding models ----------------------------------------------------------------------
def test_an_embedding_model_has_one_slot_whatever_parallel(url):
    set_scheduler(url, parallel=4)
    set_profile(url, "embedder:latest", hang_rate=1.0)
    with ExitStack() as stack:
        hold(stack, url, "/api/embed", {"model": "embedder:latest", "input": "a"})
        until(url, "embedder:latest", in_flight=1)
        hold(stack, url, "/v1/embeddings", {"model": "embedder:latest", "input": "b"})
        until(url, "embedder:latest", in_flight=1, queued=1, slots=1)
        for _ in range(2):
            hold(stack, url, "/api/chat", chat("stuck:latest"))
        until(url, "stuck:latest", in_flight=2, queued=0, slots=4)
    until(url, "embedder:latest", in_flight=0, queued=0)


# --- the scheduler alone (orderings HTTP cannot force) ---------------------------------------
def test_a_waiter_cancelled_as_its_slot_arrives_hands_the_slot_on():
    async def scenario() -> None:
        scheduler = Scheduler(parallel=1, max_queue=2)
        for _ in range(3):
            scheduler.admit("m", one_slot=False, ready=True)
        await scheduler.take_slot("m")
        second = asyncio.create_task(scheduler.take_slot("m"))
        third = asyncio.create_task(scheduler.take_slot("m"))
        await asyncio.sleep(0)
        assert scheduler.snapshot()["models"]["m"] == {"slots": 1, "in_flight": 1, "queued": 2, "busy": 0}
        with pytest.raises(ServerBusy):
            scheduler.admit("m", one_slot=False, ready=True)
        scheduler.release("m")  # the slot goes to the second waiter...
        second.cancel()  # ...which leaves before it runs: the third gets it
        with pytest.raises(asyncio.CancelledError):
            await second
        scheduler.withdraw("m")
        await third
        assert scheduler.snapshot()["models"]["m"] == {"slots": 1, "in_flight": 1, "queued": 0, "busy": 1}
        scheduler.configure(parallel=None)
        scheduler.release("m")
        scheduler.reset()
        assert scheduler.snapshot() == {"parallel": 1, "max_queue": 2, "queued": 0, "busy": 0, "models": {}}

    asyncio.run(scenario())


def test_fewer_slots_let_running_requests_finish_and_hold_new_ones_back():
    async def scenario() -> None:
        scheduler = Scheduler(parallel=3)
        for _ in range(3):
            scheduler.admit("m", one_slot=False, ready=True)
            await scheduler.take_slot("m")
        scheduler.configure(parallel=1)
        scheduler.admit("m", one_slot=False, ready=True)
        waiting = asyncio.create_task(scheduler.take_slot("m"))
        for running in (3, 2):
            await asyncio.sleep(0)
            assert not waiting.done() and scheduler.snapshot()["models"]["m"]["in_flight"] == running
            scheduler.release("m")
        scheduler.release("m")
        await waiting
        assert scheduler.snapshot()["models"]["m"]["in_flight"] == 1

    asyncio.run(scenario())


# --- the CLI -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_flags_set_the_limits_and_default_to_four_slots():
    cli = [sys.executable, "-m", "proxy.cli", "simulate"]
    refused = subprocess.run([*cli, "--parallel", "0"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "--parallel" in refused.stderr
    parser_help = " ".join(subprocess.run([*cli, "--help"], capture_output=True, text=True, timeout=30).stdout.split())
    assert "OLLAMA_NUM_PARALLEL" in parser_help and "default 4" in parser_help and "default 512" in parser_help
    port = _free_port()
    process = subprocess.Popen([*cli, "--listen", f"127.0.0.1:{port}", "--parallel", "2", "--max-queue", "7"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def limits() -> dict | None:
        try:
            return requests.get(f"http://127.0.0.1:{port}/_simulator/scheduler", timeout=1).json()
        except requests.ConnectionError:
            return None

    try:
        assert wait_for(limits, 15, "the simulator CLI to answer") == {"parallel": 2, "max_queue": 7}
    finally:
        process.terminate()
        process.wait(timeout=10)
