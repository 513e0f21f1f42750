"""``--listen`` addresses, read one way by every command (proxy, exporter, simulator).

``HOST:PORT`` or ``[IPv6]:PORT``. An empty host (``:9101``) means loopback, not every
interface: listeners bind to 127.0.0.1 unless told otherwise, and ``0.0.0.0:9101`` says so.
"""

from __future__ import annotations


def parse_listen(value: str) -> tuple[str, int]:
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            sep = ""  # a bare IPv6 address needs brackets to carry a port
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9101 or [::1]:9101), got {value!r}")
    return host or "127.0.0.1", int(port)
