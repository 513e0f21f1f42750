"""`make demo` tells the whole story, cleans up after itself, and works twice in a row,
as `ollama-sidecar demo` and as `python -m proxy.commands.demo`."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time


def nobody_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_demo_rolls_back_and_cleans_up_twice_in_a_row():
    # The default story (a ramp whose canary breaks at 50 %), then the split story through
    # the demo module itself, which runs exactly `ollama-sidecar demo`.
    runs = ((["-m", "proxy.cli", "demo"], "rollout"), (["-m", "proxy.commands.demo", "--scenario", "rollback"],
                                                       "rollback"))
    for command, scenario in runs:
        r = subprocess.run([sys.executable, *command, "--no-monitoring", "--linger", "0",
                            "--fault-after", "3", "--timeout", "40"],
                           capture_output=True, text=True, timeout=150)
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        if scenario == "rollout":
            assert "the canary breaks" in out and "progressing 2/4" in out and "FAILED, step 3 of 4 at 50%" in out
            # the rollout's gate, or the breaker (on when there is no Prometheus) if it is first
            assert re.search(r"rolled back [0-9.]+s after the canary broke, by (rollout|breaker)\.", out), out
        else:
            assert "the canary breaks" in out and "ROLLED BACK (breaker)" in out
        assert "requests on stable that failed at any time: 0" in out
        assert "/metrics" in out and "stopped every process the demo started." in out
        ports = {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", out)}
        assert len(ports) >= 3  # simulator, proxy, exporter
        assert all(nobody_listens(p) for p in ports)  # nothing outlived the demo


def test_the_rollout_ok_demo_promotes_a_healthy_canary():
    r = subprocess.run([sys.executable, "-m", "proxy.cli", "demo", "--scenario", "rollout-ok", "--no-monitoring",
                        "--linger", "0", "--timeout", "60"], capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCEEDED" in r.stdout and "promoted: qwen3:8b-ft is the stable model now." in r.stdout
    assert "the canary breaks" not in r.stdout


def test_killing_the_demo_outright_leaves_no_component_running():
    demo = subprocess.Popen([sys.executable, "-m", "proxy.cli", "demo", "--no-monitoring", "--linger", "60",
                             "--fault-after", "30"], stdout=subprocess.PIPE, text=True)
    try:
        ports: set[int] = set()
        assert demo.stdout is not None
        for line in demo.stdout:
            if "simulator http://" in line:
                ports = {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", line)}
                break
        assert len(ports) == 3
        assert not any(nobody_listens(p) for p in ports)  # all three are up
    finally:
        demo.kill()  # SIGKILL: no chance to clean up itself
        demo.wait(10)
    deadline = time.monotonic() + 15
    while not all(nobody_listens(p) for p in ports):
        assert time.monotonic() < deadline, "a component outlived the demo"
        time.sleep(0.2)


def test_the_demo_module_takes_the_demo_options():
    r = subprocess.run([sys.executable, "-m", "proxy.commands.demo", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ollama-sidecar demo") and "--fault-after" in r.stdout
    r = subprocess.run([sys.executable, "-m", "proxy.commands.demo", "--no-such-option"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr  # argparse's answer, not a traceback


def test_the_failover_demo_fails_only_the_streams_in_flight_on_the_dead_server():
    r = subprocess.run([sys.executable, "-m", "proxy.cli", "demo", "--scenario", "failover", "--no-monitoring",
                        "--linger", "0", "--fault-after", "5"], capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "simulator2 dies (SIGKILL)" in out and "simulator2 DOWN" in out
    failed = int(re.search(r"failed: (\d+); streams in flight on simulator2 when it died: (\d+)", out)[1])
    in_flight = int(re.search(r"when it died: (\d+)", out)[1])
    assert failed == in_flight  # only those
    assert "failed requests that were not in flight on simulator2: 0" in out
    assert "requests started after it died that failed: 0" in out
