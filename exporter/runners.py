"""Which model sits on which GPU: map Ollama's runner processes to the models they serve.

Ollama loads each model in a runner, a child process of the ``ollama`` binary
(``ollama runner --model /…/blobs/sha256-<hex> …``; ``ollama_llama_server`` before 0.4).
NVML lists those pids per GPU with their memory; Ollama's ``/api/ps`` lists models with
``size_vram``; neither says which is which. Two ways to join them, best first:

1. **The command line.** ``/proc/<pid>/cmdline`` names the model's blob after ``--model``;
   ``/api/show``'s modelfile names the same blob in its ``FROM`` line. Exact, but only
   when the exporter sees host pids (``pid: host`` in compose) and may read them.
2. **Memory.** The pid's memory summed over GPUs against each loaded model's
   ``size_vram``, accepted only when exactly one model is within ``tolerance`` of exactly
   one runner: NVML counts the CUDA context (a few hundred MiB) that Ollama's estimate
   does not, and two models of similar size must not be confused.

A runner neither way can name gets no series (a guess would put a model on the wrong GPU).
``/proc`` reading and ``/api/show`` are injected, so tests need neither.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from exporter.nvml_records import GpuReading

log = logging.getLogger(__name__)

RUNNER_NAMES = ("ollama", "ollama_llama_server")
MEMORY_TOLERANCE = 0.15  # share of size_vram; the CUDA context is ~0.3-0.5 GiB per GPU


@dataclass(frozen=True)
class Runner:
    pid: int
    model: str
    gpu: str
    uuid: str


@dataclass(frozen=True)
class LoadedModelRef:
    """What the mapping needs of an ``/api/ps`` entry."""

    name: str
    digest: str | None
    size_vram: int | None


def read_cmdline(pid: int, proc: Path = Path("/proc")) -> list[str] | None:
    """``/proc/<pid>/cmdline`` split at NULs; None when the pid is not visible (another
    pid namespace), gone, or not ours to read."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def model_blob(cmdline: Iterable[str]) -> str | None:
    """``sha256-<hex>`` from ``--model <path>`` (or ``--model=<path>``)."""
    args = list(cmdline)
    for i, arg in enumerate(args):
        if arg == "--model" and i + 1 < len(args):
            return os.path.basename(args[i + 1])
        if arg.startswith("--model="):
            return os.path.basename(arg.split("=", 1)[1])
    return None


def modelfile_blobs(modelfile: str) -> list[str]:
    """Blob names of the ``FROM`` lines of an ``/api/show`` modelfile (first = the weights)."""
    blobs = []
    for line in modelfile.splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].upper() == "FROM":
            name = os.path.basename(words[1].strip())
            if name.startswith("sha256"):
                blobs.append(name.replace(":", "-"))
    return blobs


class BlobIndex:
    """Blob name -> model, learned from ``/api/show`` once per (model, digest): a digest
    names fixed content, so the answer never changes and costs one call per model load."""

    def __init__(self, show_modelfile: Callable[[str], str | None]) -> None:
        self._show = show_modelfile
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str | None], list[str]] = {}

    def models_by_blob(self, loaded: Iterable[LoadedModelRef]) -> dict[str, str]:
        by_blob: dict[str, str] = {}
        for model in loaded:
            key = (model.name, model.digest)
            with self._lock:
                blobs = self._known.get(key)
            if blobs is None:
                modelfile = self._show(model.name)
                if modelfile is None:
                    continue  # try again next scrape
                blobs = modelfile_blobs(modelfile)
                with self._lock:
                    self._known[key] = blobs
            if blobs:
                by_blob.setdefault(blobs[0], model.name)
        return by_blob


class RunnerMapper:
    def __init__(self, cmdline: Callable[[int], list[str] | None] = read_cmdline,
                 blobs: BlobIndex | None = None, tolerance: float = MEMORY_TOLERANCE) -> None:
        self._cmdline = cmdline
        self._blobs = blobs
        self._tolerance = tolerance

    def map(self, gpus: Iterable[GpuReading], loaded: list[LoadedModelRef]) -> list[Runner]:
        placements: dict[int, list[tuple[str, str, int]]] = {}  # pid -> [(gpu, uuid, bytes)]
        for gpu in gpus:
            procs = list(gpu.processes) + [p for inst in gpu.mig_instances for p in inst.processes]
            for proc in procs:
                if proc.name in RUNNER_NAMES:
                    placements.setdefault(proc.pid, []).append((str(gpu.index), gpu.uuid, proc.memory_bytes))
        if not placements or not loaded:
            return []
        model_of: dict[int, str] = {}
        blob_of = {pid: model_blob(args) for pid in placements if (args := self._cmdline(pid))}
        if self._blobs is not None and any(blob_of.values()):
            by_blob = self._blobs.models_by_blob(loaded)
            for pid, blob in blob_of.items():
                if blob and blob in by_blob:
                    model_of[pid] = by_blob[blob]
        self._match_memory(placements, loaded, model_of)
        return [Runner(pid, model_of[pid], gpu, uuid)
                for pid in sorted(model_of) for gpu, uuid, _ in placements[pid]]

    def _match_memory(self, placements: dict[int, list[tuple[str, str, int]]],
                      loaded: list[LoadedModelRef], model_of: dict[int, str]) -> None:
        """Pair the runners and models left over when the match is unique both ways."""
        taken = set(model_of.values())
        models = [m for m in loaded if m.name not in taken and m.size_vram]
        pids = {pid: sum(b for _, _, b in where) for pid, where in placements.items() if pid not in model_of}

        def close(used: int, model: LoadedModelRef) -> bool:
            assert model.size_vram
            return abs(used - model.size_vram) <= self._tolerance * model.size_vram

        for pid, used in pids.items():
            candidates = [m for m in models if close(used, m)]
            if len(candidates) != 1:
                continue
            rivals = [p for p, u in pids.items() if close(u, candidates[0])]
            if rivals == [pid]:
                model_of[pid] = candidates[0].name
