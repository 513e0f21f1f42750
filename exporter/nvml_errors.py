"""Sort NVML failures into "the GPU lacks this field", "NVML is gone" and real errors.

NVML answers a field it cannot give in several ways, and only two of them mean the GPU
simply does not have it: ``NotSupported`` and ``FunctionNotFound`` (a driver older than
the call). Everything else is a real failure that an operator must see: ``NoPermission``
(a container without the right capabilities), ``Unknown``, ``Timeout``, ``GpuIsLost``,
``ResetRequired``... Before this module those were all skipped as "not supported", so a
GPU that had stopped answering looked like a GPU without sensors.

Not every failure is an ``NVMLError`` either: nvidia-ml-py 13.x raises
``NVMLLibraryMismatchError`` (a plain ``Exception``) from its unversioned process query on
drivers before R510, decodes names strictly (``UnicodeDecodeError``), and a binding
function that a future release drops is an ``AttributeError``. :func:`classify` gives each
a short, bounded name for the ``error`` label of ``gpu_nvml_errors_total``.
"""

from __future__ import annotations

import logging
import threading
from enum import Enum

import pynvml

log = logging.getLogger("exporter.nvml_reader")


class Kind(Enum):
    UNSUPPORTED = "unsupported"  # the GPU or driver lacks the field: leave it out, quietly
    LIBRARY_GONE = "library_gone"  # NVML itself stopped working: shut down, retry later
    GPU_LOST = "gpu_lost"  # this GPU fell off the bus: skip the rest of it this read
    ERROR = "error"  # count it, log it once, leave out the one field


_LIBRARY_GONE = (pynvml.NVMLError_Uninitialized, pynvml.NVMLError_DriverNotLoaded,
                 pynvml.NVMLError_LibraryNotFound)
_UNSUPPORTED = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound)


def kind(exc: BaseException) -> Kind:
    """What a failure of one NVML call means for the reader."""
    if isinstance(exc, _UNSUPPORTED):
        return Kind.UNSUPPORTED
    if isinstance(exc, _LIBRARY_GONE):
        return Kind.LIBRARY_GONE
    if isinstance(exc, pynvml.NVMLError_GpuIsLost):
        return Kind.GPU_LOST
    return Kind.ERROR


def error_name(exc: BaseException) -> str:
    """A bounded label value: ``NoPermission``, ``GpuIsLost``, ``LibraryMismatch``,
    ``UnicodeDecodeError``, ``code_42`` for an NVML code these bindings do not name."""
    if isinstance(exc, pynvml.NVMLError):
        name = type(exc).__name__
        if name.startswith("NVMLError_"):
            return name[len("NVMLError_"):]
        return f"code_{getattr(exc, 'value', 'unknown')}"
    if isinstance(exc, pynvml.NVMLLibraryMismatchError):
        return "LibraryMismatch"
    return type(exc).__name__


class ErrorCounts:
    """``gpu_nvml_errors_total`` as it accrues, and one warning per (GPU, call, error):
    a GPU that fails the same way on every scrape logs once, not every 15 s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str, str], int] = {}

    def record(self, gpu: str, uuid: str, call: str, exc: BaseException) -> None:
        key = (gpu, uuid, call, error_name(exc))
        with self._lock:
            first = key not in self._counts
            self._counts[key] = self._counts.get(key, 0) + 1
        if first:
            log.warning("GPU %s (%s): %s failed with %s (%s); that field is left out and counted in "
                        "gpu_nvml_errors_total, logged once", gpu, uuid or "uuid unknown", call, key[3], exc)

    def snapshot(self) -> dict[tuple[str, str, str, str], int]:
        """(gpu, uuid, call, error) -> failures so far."""
        with self._lock:
            return dict(self._counts)
