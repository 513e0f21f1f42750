"""Config reload on SIGHUP and when the file changes on disk.

The new file is validated whole (:func:`proxy.config.load_config`) before anything
changes; an invalid one is rejected, logged, counted and shown by ``GET /admin/routes``
while the old config stays in force. Settings that need a new socket or new buffers
(``listen``, session label limits) take effect at the next restart; the log says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable

from proxy.config import ConfigError, ProxyConfig, load_config

log = logging.getLogger("ollama_sidecar.reload")

RESTART_ONLY = ("listen", "session_label_cap", "session_label_ttl", "model_label_cap", "max_body_bytes",
                "admission", "alertmanager_url", "reconcile_interval", "reconcile_grace", "reload_interval", "state_file",
                "shared_state")


class ConfigReloader:
    def __init__(self, path: str, overrides: dict[str, Any], current: Callable[[], ProxyConfig],
                 apply: Callable[[ProxyConfig, ProxyConfig], None], on_result: Callable[[bool, str | None], None]) -> None:
        self.path = path
        self.overrides = overrides
        self.current = current
        self.apply = apply
        self.on_result = on_result
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def reload(self) -> tuple[bool, str]:
        self._stamp = self._file_stamp()
        old = self.current()
        try:
            new = load_config(self.path, overrides=self.overrides)
        except ConfigError as exc:
            return self._reject(str(exc))
        except Exception as exc:  # a reload must never take the proxy down
            log.exception("unexpected error while reloading %s", self.path)
            return self._reject(f"{type(exc).__name__}: {exc}")
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(old, key):
                log.warning("config: %s changed; it takes effect at the next restart", key)
        if new.admin_token != old.admin_token:
            log.warning("config: the admin token changed; the new one is in force")
        self.apply(new, old)
        self.on_result(True, None)
        log.info("config reloaded from %s", self.path)
        return True, "reloaded"

    def _reject(self, problem: str) -> tuple[bool, str]:
        message = f"config reload rejected, old config kept: {problem}"
        log.error(message)
        self.on_result(False, problem)
        return False, message

    async def watch(self, interval: float) -> None:
        """Poll the file; reload when its mtime or size changes."""
        while True:
            await asyncio.sleep(interval)
            stamp = self._file_stamp()
            if stamp is not None and stamp != self._stamp:
                # Editors write in several steps: let the file settle before reading it.
                await asyncio.sleep(min(0.2, interval))
                self.reload()  # never raises
            elif stamp is None and self._stamp is not None:
                self._stamp = None
                log.error("config file %s disappeared; keeping the config in force", self.path)
