"""The state that must survive a restart: rollbacks, API-made changes and their reasons.

Written atomically (temp file in the same directory, fsync, rename, fsync the
directory) so a crash mid-write leaves either the old file or the new one, never half
of each. A file that cannot be read as state is moved aside, not deleted: someone will
want to see what it held. A ``kill -9`` between creating the temp file and renaming it
leaves the temp file behind (51 after 200 kills); they are removed when the state is
loaded, since one proxy owns its state file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from proxy.common.jsonutil import parse_json

log = logging.getLogger("ollama_sidecar.state")

STATE_VERSION = 1


class StateFile:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None

    def load(self, validate: Callable[[dict[str, Any]], None] = lambda data: None
             ) -> tuple[dict[str, Any], str | None]:
        """The saved state ({} when there is none) and, if the file was corrupt, why.
        ``validate`` raises ValueError for content that parses but cannot be trusted."""
        self.remove_stale_temp_files()
        if self.path is None or not self.path.exists():
            return {}, None
        try:
            data = parse_json(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION \
                    or not isinstance(data.get("routes", {}), dict):
                raise ValueError(f"not an ollama-sidecar state file of version {STATE_VERSION}")
            validate(data)
            return data, None
        except (OSError, ValueError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            log.error("STATE FILE %s IS CORRUPT (%s); moved it to %s and started from the config. "
                      "Rollbacks recorded in it are NOT in effect.", self.path, exc, aside)
            return {}, str(exc)

    def remove_stale_temp_files(self) -> int:
        """Delete temp files a killed writer left beside the state file; returns how many."""
        if self.path is None or not self.path.parent.is_dir():
            return 0
        pattern = re.compile(rf"\.{re.escape(self.path.name)}\.[A-Za-z0-9_]+")
        removed = 0
        for entry in self.path.parent.iterdir():
            if pattern.fullmatch(entry.name) and entry.is_file():
                try:
                    entry.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("cannot remove stale temp file %s: %s", entry, exc.strerror)
        if removed:
            log.info("removed %d temp file(s) left beside %s by an interrupted write", removed, self.path)
        return removed

    def save(self, data: dict[str, Any]) -> None:
        if self.path is None:
            return
        data = {"version": STATE_VERSION, **data}
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def persisted_key(path: Path) -> bytes:
    """A random 32-byte key kept in ``path`` (created once, readable by its owner only), so
    hashed session labels stay the same across restarts."""
    try:
        key = path.read_bytes().strip()
        if len(key) >= 32:
            return key
        log.warning("session key file %s is too short; writing a new key (session labels change)", path)
    except FileNotFoundError:
        pass
    key = os.urandom(32).hex().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return key
