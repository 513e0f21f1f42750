"""The durable local journal: rollbacks made while Redis was down, until Redis has them.

Alertmanager treats any 2xx as delivered. While Redis is down a rollback webhook is still
applied on the replica that received it (safety first), and acknowledged only once its
effect is in this file: one JSON line per effect, flushed and fsynced before the answer.
When Redis is back the replica replays the file through the normal write path (a
rollback already in Redis is a no-op) and empties it. A replica that restarts while
Redis is still down applies the journal to its own routes at start.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("ollama_sidecar.replicas")


class Journal:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None

    @property
    def durable(self) -> bool:
        return self.path is not None

    def append(self, entries: list[dict[str, Any]]) -> bool:
        """Write ``entries`` durably; False when there is no journal or the write failed."""
        if self.path is None or not entries:
            return self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            log.error("cannot write the state journal %s: %s", self.path, exc.strerror or exc)
            return False

    def entries(self) -> tuple[list[dict[str, Any]], int]:
        """Every complete entry, and how many lines were read (for :meth:`clear`); a line cut
        by a crash mid-write is skipped, said once."""
        if self.path is None or not self.path.exists():
            return [], 0
        out = []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except ValueError:
                log.warning("state journal %s: line %d is not a complete entry; skipped", self.path, number)
                continue
            if isinstance(entry, dict) and isinstance(entry.get("route"), str):
                out.append(entry)
        return out, len(lines)

    def clear(self, replayed: int) -> None:
        """Drop the first ``replayed`` lines (those now in Redis); keep any added since."""
        if self.path is None or not self.path.exists():
            return
        rest = self.path.read_text(encoding="utf-8", errors="replace").splitlines()[replayed:]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in rest))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
