"""Stable dashboard uids, importable without grafanalib.

Alert annotations link to these (``/d/<uid>``), so a uid never changes once shipped.
"""

OVERVIEW = "ollama-sidecar-overview"
ROLLOUT = "ollama-sidecar-rollout"
GPUS = "ollama-sidecar-gpus"
SESSIONS = "ollama-sidecar-sessions"

ALL = (OVERVIEW, ROLLOUT, GPUS, SESSIONS)
