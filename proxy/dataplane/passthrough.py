"""Everything that is not chat, generate or embeddings: forwarded as is, counted and timed.

Bodies stream through in both directions (``ollama create`` uploads gigabytes of blobs,
``/api/pull`` streams progress for minutes). Three small exceptions make route aliases
behave like models to clients that look a model up before using it (``ollama run chat``,
Open WebUI): ``/api/tags`` and ``/v1/models`` list the aliases, and ``/api/show`` and
``/v1/models/{alias}`` answer for an alias with its stable model's description.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from typing import Any

import aiohttp
from aiohttp import web

from proxy.common.jsonutil import json_or_none
from proxy.control.routing import RouteTable
from proxy.dataplane.errors import ProxyError, classify_upstream_status, error_response
from proxy.dataplane.instrument import Recorder, RequestRecord
from proxy.dataplane.observe import endpoint_label
from proxy.dataplane.upstream import Upstream, forward_headers, relay_chunks
from proxy.fleet.fleet import Fleet
from proxy.metrics import ErrorType

log = logging.getLogger("ollama_sidecar.proxy")

SMALL_BODY = 1 << 20  # replies up to this size with a Content-Length are relayed in one write
SHOW_LIMIT = 1 << 20  # an /api/show request larger than this is not looked into


# Model management changes one server's models: with several servers the client names it.
MANAGEMENT = frozenset({"/api/pull", "/api/create", "/api/delete", "/api/copy", "/api/push"})
# Listings that answer for the whole fleet: the union over the servers.
LISTINGS = frozenset({"/api/tags", "/api/ps"})
TARGET_HEADER = "X-Sidecar-Upstream"
TARGET_PARAM = "upstream"


class Passthrough:
    def __init__(self, upstream: Upstream, recorder: Recorder, routes: RouteTable, fleet: Fleet) -> None:
        self.upstream = upstream
        self.recorder = recorder
        self.routes = routes
        self.fleet = fleet

    def _target(self, request: web.Request) -> str:
        """The server a passthrough request goes to: the one it names (X-Sidecar-Upstream
        or ?upstream=), else the first healthy one; model management with several servers
        must name one."""
        named = request.headers.get(TARGET_HEADER) or request.query.get(TARGET_PARAM)
        servers = self.fleet.servers
        if named:
            if named not in servers:
                raise ProxyError(400, ErrorType.BAD_REQUEST, f"no upstream named {named!r} (known: "
                                 f"{', '.join(sorted(servers))})")
            return servers[named].url
        if self.fleet.several and request.path in MANAGEMENT:
            raise ProxyError(400, ErrorType.BAD_REQUEST, f"{request.path} changes one server's models and this proxy "
                             f"has several ({', '.join(sorted(servers))}): name one with the header "
                             f"'{TARGET_HEADER}: NAME' or '?{TARGET_PARAM}=NAME'")
        healthy = [s for s in servers.values() if s.up and not s.config.dedicated]
        return (healthy or list(servers.values()))[0].url

    async def handle(self, request: web.Request, start: float,
                     drop: frozenset[str] = frozenset()) -> web.StreamResponse:
        endpoint = endpoint_label(request.path)
        error_type = ErrorType.NONE
        try:
            if self.fleet.several and request.method == "GET" and request.path in LISTINGS \
                    and not (request.headers.get(TARGET_HEADER) or request.query.get(TARGET_PARAM)):
                return await self._union(request)
            upstream = self._target(request)
            alias, data, headers, path = await self._alias_request(request, drop)
            streaming_body = data is request.content
            if streaming_body and request.content_length is not None and "Transfer-Encoding" not in request.headers:
                headers["Content-Length"] = str(request.content_length)  # keep the upload unchunked
            resp = await self.upstream.send(request if path is None else request.clone(rel_url=path),
                                            upstream, data, headers, streaming_body=streaming_body)
            try:
                error_type = classify_upstream_status(resp.status, instrumented=False)
                response, broke = await self._relay(request, resp, upstream, alias)
                if broke:
                    error_type = ErrorType.STREAM_INTERRUPTED
                return response
            except BaseException:
                resp.close()
                raise
            finally:
                resp.release()
        except ProxyError as err:
            error_type = err.error_type
            return error_response(request.path, err)
        except (asyncio.CancelledError, ConnectionResetError):
            error_type = ErrorType.CLIENT_DISCONNECT
            raise
        except Exception:
            log.exception("internal error forwarding %s %s", request.method, endpoint)
            error_type = ErrorType.INTERNAL
            return error_response(request.path, ProxyError(500, ErrorType.INTERNAL, "internal error in "
                                                           "ollama-sidecar; see the proxy's log"))
        finally:
            self.recorder.record(RequestRecord(endpoint, error_type=error_type,
                                               duration=time.perf_counter() - start))

    async def _union(self, request: web.Request) -> web.Response:
        """``/api/tags`` or ``/api/ps`` over every healthy server: each model once (the first
        server's entry), with route aliases added as for one server."""
        servers = [s for s in self.fleet.servers.values() if s.up] or list(self.fleet.servers.values())
        session = self.upstream.session
        assert session is not None

        async def listing(url: str) -> list[dict]:
            try:
                async with session.get(f"{url.rstrip('/')}{request.path}",
                                       timeout=aiohttp.ClientTimeout(total=self.upstream.timeouts.connect + 5)) as r:
                    doc = await r.json(content_type=None) if r.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return []
            models = doc.get("models") if isinstance(doc, dict) else None
            return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []

        merged: dict[str, dict] = {}
        for models in await asyncio.gather(*(listing(s.url) for s in servers)):
            for m in models:
                merged.setdefault(str(m.get("name") or m.get("model")), m)
        body = json.dumps({"models": list(merged.values())}).encode()
        body = self._with_aliases(request, 200, body, None)
        return web.Response(status=200, body=body, content_type="application/json")

    async def _relay(self, request: web.Request, resp: aiohttp.ClientResponse, upstream: str,
                     alias: str | None) -> tuple[web.StreamResponse, bool]:
        """Relay the reply; the flag says the upstream broke after the status line went out."""
        headers = forward_headers(resp.headers)
        length = resp.content_length
        if request.method != "HEAD" and length is not None and length <= SMALL_BODY:
            body = await self.upstream.read_body(resp, upstream)
            body = self._with_aliases(request, resp.status, body, alias)
            return web.Response(status=resp.status, body=body, headers=headers), False
        out = web.StreamResponse(status=resp.status, headers=headers)
        if length is not None:
            out.content_length = length
        await out.prepare(request)
        try:
            await relay_chunks(resp, self.upstream.timeouts.idle, out.write)
        except ConnectionResetError:
            raise  # the client left (aiohttp's reset is a ClientError too): not the upstream's doing
        except Exception as exc:  # upstream broke, went silent, or (logged) a bug of ours
            if not isinstance(exc, (aiohttp.ClientError, TimeoutError)):
                log.exception("internal error relaying %s", request.path)
            # The status line went out already: the only honest signal left is to break the
            # connection, so the client sees a truncated reply instead of a complete one.
            if request.transport is not None:
                request.transport.abort()
            return out, True
        await out.write_eof()
        return out, False

    # --- route aliases ---------------------------------------------------------------------------
    async def _alias_request(self, request: web.Request,
                             drop: frozenset[str]) -> tuple[str | None, Any, Any, str | None]:
        """(alias, body to send, headers, rewritten path) for this request."""
        headers = forward_headers(request.headers, drop)
        routes = self.routes.aliases()
        if routes and request.method == "POST" and request.path == "/api/show" \
                and request.content_length is not None and request.content_length <= SHOW_LIMIT:
            raw = await request.read()
            body = json_or_none(raw)
            for key in ("model", "name"):  # `name` is the older spelling Ollama still accepts
                if isinstance(body, dict) and isinstance(body.get(key), str) and body[key] in routes:
                    alias = body[key]
                    body[key] = routes[alias].stable
                    return alias, json.dumps(body).encode(), headers, None
            return None, raw, headers, None
        if routes and request.method == "GET" and request.path.startswith("/v1/models/"):
            name = urllib.parse.unquote(request.path[len("/v1/models/"):])
            if name in routes:
                return name, None, headers, "/v1/models/" + urllib.parse.quote(routes[name].stable, safe=":")
        return None, (request.content if request.body_exists else None), headers, None

    def _with_aliases(self, request: web.Request, status: int, body: bytes, alias: str | None) -> bytes:
        routes = self.routes.aliases()
        if not routes or status != 200 or (alias is None and request.path not in ("/api/tags", "/v1/models")):
            return body
        doc = json_or_none(body)
        if not isinstance(doc, dict):
            return body
        if alias is not None:
            if request.path.startswith("/v1/models/"):
                doc["id"] = alias
            return json.dumps(doc).encode()
        if request.path == "/api/tags" and isinstance(doc.get("models"), list):
            by_name = {m.get("name"): m for m in doc["models"] if isinstance(m, dict)}
            for name, state in routes.items():
                entry = dict(by_name.get(state.stable) or by_name.get(f"{state.stable}:latest") or {})
                entry.update({"name": name, "model": name})
                doc["models"].append(entry)
        elif request.path == "/v1/models" and isinstance(doc.get("data"), list):
            for name in routes:
                doc["data"].append({"id": name, "object": "model", "created": int(time.time()),
                                    "owned_by": "ollama-sidecar"})
        else:
            return body
        return json.dumps(doc).encode()
