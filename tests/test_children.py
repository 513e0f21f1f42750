"""The one supervisor for child processes (proxy/commands/children.py), used by the demo
stack and the benchmark: children die with their parent, stop() stops a child's whole
process group, and free_port gives the preferred port only when it is free."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.commands.children import Child, free_port
from tests.conftest import wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def gone(pid: int) -> bool:
    """Exited (a zombie nobody has reaped yet counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_a_child_dies_when_its_parent_is_killed_outright(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from proxy.commands.children import Child
        child = Child("sleeper", {SLEEPER!r}, Path({str(tmp_path / 'child.log')!r})).start()
        print(child.pid, flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert not gone(child_pid)
    finally:
        parent.kill()  # SIGKILL: the parent cannot stop anything itself
        parent.wait(10)
    wait_for(lambda: gone(child_pid), 10, "the child to die with its parent")


def test_stop_ends_the_whole_process_group_and_logs_are_kept(tmp_path):
    log = tmp_path / "wrapper.log"
    # A wrapper that ignores SIGTERM (and so does the grandchild it starts, which inherits
    # that): only the SIGKILL that stop() sends the whole group after term_wait ends both.
    wrapper = Child("wrapper", [sys.executable, "-c", textwrap.dedent(f"""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen({SLEEPER!r})
        print("grandchild", grandchild.pid, flush=True)
        time.sleep(120)
    """)], log).start()
    line = wait_for(lambda: log.read_text().strip(), 10, "the wrapper's first line")
    grandchild = int(line.split()[1])
    assert os.getpgid(grandchild) == wrapper.pid  # its own session, the grandchild inside it
    wrapper.stop(term_wait=0.5, kill_wait=5)
    assert not wrapper.alive() and wrapper.proc is not None and wrapper.proc.returncode == -signal.SIGKILL
    wait_for(lambda: gone(grandchild), 10, "the grandchild to stop")
    assert "grandchild" in wrapper.log_tail()
    wrapper.stop()  # stopping twice is harmless


def test_free_port_prefers_the_asked_port_only_when_free():
    port = free_port()
    assert free_port(port) == port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        other = free_port(port)
    assert other != port and other > 0
