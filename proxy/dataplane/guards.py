"""Checks every request passes before any handler sees it: its target and header size.

Both answer in the client's protocol and are counted as ``bad_request``, like the data
plane's own refusals:

- A request target that is not a path (absolute-form ``http://host/api/tags``, ``*``)
  was glued onto the upstream URL and failed as a 500. The proxy is not a forward
  proxy: such a target is a 400 and never leaves for any host.
- aiohttp bounds each header line (8 KiB) but not their sum: 100 headers of 8 KiB were
  accepted and forwarded to Ollama. ``max_header_bytes`` bounds the total; beyond it,
  431 (RFC 6585).
"""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from proxy.dataplane.errors import ProxyError, error_response
from proxy.dataplane.instrument import RequestRecord
from proxy.dataplane.observe import endpoint_label
from proxy.metrics import ErrorType


def make_request_guard(forwarder: Any) -> Callable[[web.Request], web.StreamResponse | None]:
    """The check for the front middleware; reads the live config of ``forwarder`` (a reload
    changes the bound). Returns the refusal to send, or None to go on."""

    def request_guard(request: web.Request) -> web.StreamResponse | None:
        problem = refusal(request, forwarder.config.max_header_bytes)
        if problem is None:
            return None
        forwarder.recorder.record(RequestRecord(endpoint_label(request.path), error_type=problem.error_type,
                                                status=problem.status))
        return error_response(request.path, problem)

    return request_guard


def refusal(request: web.Request, max_header_bytes: int) -> ProxyError | None:
    """Why ``request`` is refused before routing, or None."""
    if not request.raw_path.startswith("/"):
        return ProxyError(400, ErrorType.BAD_REQUEST, "the request target must be a path such as /api/chat "
                          "(this is not a forward proxy)")
    size = sum(len(name) + len(value) for name, value in request.raw_headers)
    if size > max_header_bytes:
        return ProxyError(431, ErrorType.BAD_REQUEST, f"request headers total {size} bytes, over the proxy's "
                          f"limit of {max_header_bytes} bytes (max_header_bytes)")
    return None
