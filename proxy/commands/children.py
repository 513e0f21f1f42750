"""Child processes that must die with their parent, and free loopback ports.

The one supervisor for every process the operator tools start (the demo stack's simulator,
proxy, exporter, Prometheus and Alertmanager; the benchmark's fake upstream, proxy and
nginx). Each :class:`Child` runs in its own session (process group), so Ctrl-C in a
terminal reaches the parent, which stops its children in order, and :meth:`Child.stop`
stops the child's whole group (nginx workers, a wrapper's grandchildren). On Linux the
kernel also sends the child SIGTERM when the parent dies outright (``PR_SET_PDEATHSIG``,
armed between fork and exec): a SIGKILLed demo leaves no Prometheus on port 9090.
Elsewhere only :meth:`Child.stop` stops them.

The parent-death signal is tied to the thread that started the child: start children from
a thread that outlives them (the main thread, as the demo, the tests and the bench do).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _find_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux (no prctl), or no libc to load
        return None


# Resolved here, in the parent: the child, between fork and exec, only makes the call.
_PRCTL = _find_prctl()


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free on ``host``, else any free port the kernel picks.

    The port is free when this returns; whoever binds it next wins, so bind it soon.
    """
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind((host, candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port on {host}")


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def arm() -> None:  # runs in the child, after fork and setsid, before exec
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))
            if os.getppid() != parent_pid:  # the parent died before the signal was armed
                os._exit(1)
    return arm


class Child:
    """One child process: started with :meth:`start`, always stopped with :meth:`stop`.

    Output (stdout and stderr together) goes to ``log_path``, appended, so a restarted
    child's log follows the previous one's.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def start(self) -> "Child":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        return self

    def stop(self, term_wait: float = 8.0, kill_wait: float = 5.0) -> None:
        """SIGTERM to the child's process group, SIGKILL after ``term_wait`` seconds."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                proc.wait()
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def kill(self) -> None:
        """SIGKILL at once, as a machine or a process dies: no chance to finish anything."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
