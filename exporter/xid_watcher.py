"""Count XID critical errors per GPU through NVML's event API, on a background thread.

XIDs are the driver's error reports (79: fell off the bus, 48: double-bit ECC, 31: a
memory page fault in an application, 13/43: a kernel fault...). NVML does not keep a
count to poll: they arrive as events, so a thread waits on an event set and counts them.
Scrapes only read the counts, never wait on events.

The thread holds its own NVML reference (``nvmlInit`` is reference counted), so the
reader's shutdown and retry do not pull the library from under it; when NVML fails it
frees what it holds and tries again every ``retry_interval`` seconds. A GPU that cannot
deliver XID events (``NotSupported``: consumer cards on some drivers) gets no XID series,
rather than a 0 that would look like a clean bill of health.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pynvml

from exporter.nvml_device import text
from exporter.nvml_errors import ErrorCounts, Kind, kind
from exporter.nvml_records import XidCount

log = logging.getLogger("exporter.nvml_reader")

POLL_MS = 1000  # how long one wait blocks: also how long close() may take


class XidWatcher:
    def __init__(self, errors: ErrorCounts, retry_interval: float = 30.0) -> None:
        self._errors = errors
        self.retry_interval = retry_interval
        self._lock = threading.Lock()
        self._counts: dict[str, XidCount] = {}  # uuid -> count
        self._index_of: dict[str, int] = {}
        self._event_set: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nvml-xid", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(POLL_MS / 1000 + 1)

    def counts(self) -> tuple[XidCount, ...]:
        with self._lock:
            return tuple(sorted(self._counts.values(), key=lambda c: c.index))

    # --- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.open()
                while not self._stop.is_set():
                    self.poll(POLL_MS)
            except Exception as exc:  # noqa: BLE001 -- NVML down or broken: retry later
                log.debug("XID events unavailable (%s); retrying in %gs", exc, self.retry_interval)
            finally:
                self.release()
            self._stop.wait(self.retry_interval)

    def open(self) -> None:
        """Initialise NVML and register every GPU that supports XID events."""
        pynvml.nvmlInit()
        try:
            event_set = pynvml.nvmlEventSetCreate()
        except BaseException:
            pynvml.nvmlShutdown()
            raise
        self._event_set = event_set
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = text(pynvml.nvmlDeviceGetUUID(handle))
            except pynvml.NVMLError:
                continue  # the reader reports this GPU's trouble
            try:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, event_set)
            except Exception as exc:  # noqa: BLE001
                if not (isinstance(exc, pynvml.NVMLError) and kind(exc) is Kind.UNSUPPORTED):
                    self._errors.record(str(index), uuid, "nvmlDeviceRegisterEvents", exc)
                continue
            with self._lock:
                self._index_of[uuid] = index
                self._counts.setdefault(uuid, XidCount(index, uuid, 0, None))

    def poll(self, timeout_ms: int) -> bool:
        """Wait for one event; True when one was counted. NVML's Timeout is "no event"."""
        try:
            event = pynvml.nvmlEventSetWait(self._event_set, timeout_ms)
        except pynvml.NVMLError_Timeout:
            return False
        if not int(getattr(event, "eventType", 0)) & pynvml.nvmlEventTypeXidCriticalError:
            return False
        try:
            uuid = text(pynvml.nvmlDeviceGetUUID(event.device))
        except pynvml.NVMLError:
            uuid = ""
        xid = int(event.eventData)
        with self._lock:
            index = self._index_of.get(uuid, -1)
            old = self._counts.get(uuid, XidCount(index, uuid, 0, None))
            self._counts[uuid] = XidCount(old.index, uuid, old.count + 1, xid)
        log.warning("GPU %s (%s) reported XID %d", index, uuid or "uuid unknown", xid)
        return True

    def release(self) -> None:
        if self._event_set is None:
            return
        event_set, self._event_set = self._event_set, None
        for call, args in ((pynvml.nvmlEventSetFree, (event_set,)), (pynvml.nvmlShutdown, ())):
            try:
                call(*args)
            except pynvml.NVMLError:
                pass
