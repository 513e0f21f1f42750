"""A faithful Ollama API simulator: ``ollama-sidecar simulate`` and in-process helpers.

``build_app``/``running_simulator`` (``proxy.simulator.app``), profiles
(``proxy.simulator.profiles``) and the control client (``proxy.simulator.client``).
"""

from proxy.simulator.app import RunningSimulator, build_app, running_simulator
from proxy.simulator.client import get_profiles, get_stats, reset, set_profile, set_scheduler, unload
from proxy.simulator.profiles import DEFAULT_PROFILES_PATH, ModelProfile, ProfileError, load_profiles

__all__ = [
    "DEFAULT_PROFILES_PATH",
    "ModelProfile",
    "ProfileError",
    "RunningSimulator",
    "build_app",
    "get_profiles",
    "get_stats",
    "load_profiles",
    "reset",
    "running_simulator",
    "set_profile",
    "set_scheduler",
    "unload",
]
