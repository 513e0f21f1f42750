"""Resolve where Ollama is, the way Ollama's own client reads ``OLLAMA_HOST``.

Users already have ``OLLAMA_HOST`` set for their tools; the proxy and the exporter honour
it with the same rules (Ollama's ``envconfig.Host``) so nothing needs saying twice:
``host`` → ``http://host:11434``, ``host:port`` → ``http://host:port``,
``http://host`` → port 80, ``https://host`` → port 443. ``0.0.0.0`` (the usual *bind*
address people put there for the server) is reached on loopback.
"""

from __future__ import annotations

import ipaddress
import os

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"


def parse_ollama_host(value: str) -> str:
    """Return the base URL (no trailing slash) that ``OLLAMA_HOST=value`` points at."""
    value = value.strip()
    if not value:
        return DEFAULT_OLLAMA_URL
    default_port = 11434
    scheme, sep, hostport = value.partition("://")
    if not sep:
        scheme, hostport = "http", value
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    else:
        raise ValueError(f"unsupported scheme {scheme!r} in OLLAMA_HOST {value!r}")
    hostport, _, path = hostport.partition("/")
    host, port = _split_host_port(hostport)
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if port is None or not 0 <= port <= 65535:
        port = default_port
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    base = f"{scheme}://{host}:{port}"
    return f"{base}/{path.rstrip('/')}" if path.strip("/") else base


def _split_host_port(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):  # [v6]:port or [v6]
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        try:  # a bare IPv6 address
            return str(ipaddress.IPv6Address(hostport)), None
        except ValueError:
            return hostport, None
    try:
        return host, int(port) if port else None
    except ValueError:
        return host, None


def resolve_ollama_url(explicit: str | None = None, environ: dict[str, str] | None = None) -> str:
    """An explicit URL wins, then ``OLLAMA_HOST``, then Ollama's default."""
    if explicit:
        return parse_ollama_host(explicit)
    env = os.environ if environ is None else environ
    return parse_ollama_host(env.get("OLLAMA_HOST", ""))
