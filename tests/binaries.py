"""Find the real Prometheus/Alertmanager binaries a test needs.

In CI (``CI=true``) a missing binary FAILS the test: a green run must mean the real
component ran. Locally it skips with the command that installs it.
"""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL_HINT = "sudo apt-get install prometheus prometheus-alertmanager redis-server nginx openssl (or run 'make test' as root)"


def require_binary(*names: str) -> str:
    """Return the path of the first of ``names`` on PATH, or fail (CI) / skip (locally)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = f"{' or '.join(names)} not found on PATH; install it: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def alertmanager_binary() -> str:
    # Debian ships Alertmanager as prometheus-alertmanager.
    return require_binary("prometheus-alertmanager", "alertmanager")


def redis_server_binary() -> str:
    return require_binary("redis-server")
