"""Forwarding: the request path between a client and Ollama.

Two paths. Instrumented endpoints (chat, generate, embeddings in both APIs) are read,
routed and measured: the JSON body is parsed (bounded by ``max_body_bytes``) to learn
the model, the reply is observed line by line for tokens and timings. Everything else
streams through untouched with a counter and a duration.

Streams are relayed chunk by chunk as they arrive; nothing waits for the end. The only
edit the proxy ever makes to a stream is removing the usage event it asked for on
behalf of an OpenAI client that did not (see :class:`proxy.observe.SSEStreamObserver`).
A client that goes away cancels the handler (``handler_cancellation``), which closes the
upstream connection at once so Ollama stops generating for nobody.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.admission import AdmissionControl
from proxy.config import ProxyConfig
from proxy.errors import (ProxyError, classify_upstream_status, error_response,
                          stream_error_line)
from proxy.framing import ForwardingFramer, LineFramer
from proxy.instrument import Recorder
from proxy.observe import (ENDPOINTS, Endpoint, NativeStreamObserver, ReplyStats,
                           SSEStreamObserver, endpoint_label, read_reply_body)
from proxy.routing import DIRECT_ROUTE, Decision, RouteTable
from proxy.sessions import extract_session, session_hash

access_log = logging.getLogger("ollama_sidecar.access")
log = logging.getLogger("ollama_sidecar.proxy")

# RFC 9110 hop-by-hop headers, plus those aiohttp computes itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
STREAM_TYPES = ("application/x-ndjson", "text/event-stream")
SMALL_BODY = 1 << 20  # replies up to this size with a Content-Length are relayed in one write


def forward_headers(headers: Any, drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    connection = headers.get("Connection", "")
    listed = {h.strip().lower() for h in connection.split(",")} if connection else set()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lname = name.lower()
        if lname not in HOP_BY_HOP and lname not in listed and lname not in drop:
            out.add(name, value)
    return out


class Forwarder:
    """The catch-all handler; one per application."""

    def __init__(self, config: ProxyConfig, recorder: Recorder, routes: RouteTable,
                 admission: AdmissionControl, on_result: Any = None) -> None:
        self.config = config
        self.recorder = recorder
        self.routes = routes
        self.admission = admission
        self.session: aiohttp.ClientSession | None = None
        # Called with (decision, error_type) after each instrumented request (the breaker).
        self.on_result = on_result
        self._api_keys = [k.encode() for k in config.api_keys]

    def update_config(self, config: ProxyConfig) -> None:
        """Adopt a reloaded config for requests that arrive from now on."""
        self.config = config
        self._api_keys = [k.encode() for k in config.api_keys]

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=60)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.timeouts.connect),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    # --- entry -------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        start = time.perf_counter()
        path = request.path
        try:
            self._authorize(request)
        except ProxyError as err:
            self.recorder.request(endpoint_label(path), DIRECT_ROUTE, "direct", "none", "none",
                                  err.error_type, time.perf_counter() - start, None)
            return error_response(path, err)
        endpoint = ENDPOINTS.get(path) if request.method == "POST" else None
        if endpoint is None:
            return await self._passthrough(request, start)
        return await self._instrumented(request, endpoint, start)

    def _authorize(self, request: web.Request) -> None:
        if not self._api_keys:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode()
        ok = False
        for key in self._api_keys:  # compare with every key: timing reveals nothing
            ok |= hmac.compare_digest(given, key)
        if scheme.lower() != "bearer" or not ok:
            raise ProxyError(401, "unauthorized", "gateway token missing or invalid: send "
                             "'Authorization: Bearer <key>' with a key configured in auth.api_keys")

    # --- instrumented endpoints -------------------------------------------------------------
    async def _read_json(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ProxyError(413, "bad_request", f"request body of {request.content_length} bytes is "
                             f"over the proxy's limit of {limit} bytes (max_body_bytes)")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ProxyError(413, "bad_request", f"request body is over the proxy's limit of "
                             f"{limit} bytes (max_body_bytes)") from None
        if not raw.strip():
            raise ProxyError(400, "bad_request", "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ProxyError(400, "bad_request", f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ProxyError(400, "bad_request", "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ProxyError(400, "bad_request", "model is required")
        return raw, body

    async def _instrumented(self, request: web.Request, endpoint: Endpoint, start: float) -> web.StreamResponse:
        path = endpoint.name
        session_label = "none"
        decision = Decision(DIRECT_ROUTE, "direct", "none", self.config.upstream)
        error_type = "none"
        stats = ReplyStats()
        status = 0
        try:
            raw, body = await self._read_json(request)
            requested = body["model"]
            session_raw = extract_session(self.config.session_sources, request.headers, body)
            session_label = self.recorder.session_label(session_raw)
            sources = self.routes.session_sources(requested)
            key = session_raw if sources is None else extract_session(sources, request.headers, body)
            decision = self.routes.decide(requested, key)

            stream = body.get("stream", endpoint.stream_default) is not False
            strip_usage = False
            if decision.model != requested:
                body["model"] = decision.model
            if endpoint.protocol == "openai" and endpoint.generates and stream:
                opts = body.get("stream_options")
                if not (isinstance(opts, dict) and opts.get("include_usage")):
                    body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
                    strip_usage = True
            if decision.model != requested or strip_usage:
                raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

            headers = forward_headers(request.headers, frozenset({"accept-encoding"}))
            in_flight = self.recorder.metrics.in_flight.labels(decision.route, decision.arm, decision.model)
            async with self.admission.slot():
                in_flight.inc()
                try:
                    status, error_type, response = await self._exchange(
                        request, endpoint, decision, raw, headers, strip_usage, stats)
                finally:
                    in_flight.dec()
            return response
        except ProxyError as err:
            error_type, status = err.error_type, err.status
            response = error_response(path, err)
            self._route_headers(response, decision)
            return response
        except asyncio.CancelledError:
            # A client that hangs up right after the last event (SDKs close on [DONE]) got
            # everything: that is a success, not a disconnect.
            error_type = "none" if stats.finished and error_type == "none" else "client_disconnect"
            raise
        finally:
            duration = time.perf_counter() - start
            self.recorder.request(path, decision.route, decision.arm, decision.model, session_label,
                                  error_type, duration, stats)
            if endpoint.generates:
                self._record_timings(endpoint, decision, stats, start)
            if self.on_result is not None and decision.route != DIRECT_ROUTE:
                self.on_result(decision, error_type)
            if self.config.access_log:
                access_log.info(json.dumps({
                    "endpoint": path, "route": decision.route, "arm": decision.arm,
                    "model": decision.model, "session": session_hash(session_label)
                    if session_label not in ("none", "other") else session_label,
                    "status": status or 499, "error_type": error_type, "duration": round(duration, 6),
                    "ttft": round(stats.first_content_at - start, 6) if stats.first_content_at else None,
                    "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
                }))

    def _record_timings(self, endpoint: Endpoint, d: Decision, stats: ReplyStats, start: float) -> None:
        labels = (endpoint.name, d.route, d.arm, d.model)
        if stats.first_content_at is not None:
            self.recorder.ttft(*labels, stats.first_content_at - start)
        elif stats.load_duration is not None or stats.prompt_eval_duration is not None:
            # Non-stream reply: the upstream's own account of time before the first token.
            self.recorder.ttft(*labels, (stats.load_duration or 0.0) + (stats.prompt_eval_duration or 0.0))
        n = stats.completion_tokens
        if stats.eval_duration is not None and n:
            self.recorder.tpot(*labels, stats.eval_duration / n)
        elif n and n > 1 and stats.first_content_at is not None and stats.last_content_at is not None:
            self.recorder.tpot(*labels, (stats.last_content_at - stats.first_content_at) / (n - 1))

    @staticmethod
    def _route_headers(response: web.StreamResponse, d: Decision) -> None:
        response.headers["X-Sidecar-Route"] = d.route
        response.headers["X-Sidecar-Arm"] = d.arm
        response.headers["X-Sidecar-Model"] = d.model

    async def _send(self, request: web.Request, upstream: str, data: Any, headers: CIMultiDict[str]) -> aiohttp.ClientResponse:
        assert self.session is not None
        url = URL(upstream + request.raw_path, encoded=True)
        timeouts = self.config.timeouts
        try:
            async with asyncio.timeout(timeouts.first_byte):
                return await self.session.request(request.method, url, data=data, headers=headers,
                                                  allow_redirects=False)
        except aiohttp.ClientConnectorError as exc:
            why = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)
            raise ProxyError(502, "connect", f"upstream Ollama at {upstream} refused the connection "
                             f"or is unreachable ({why})") from None
        except aiohttp.ServerTimeoutError:  # connect timeout (sock_connect)
            raise ProxyError(502, "connect", f"upstream Ollama at {upstream} did not accept a connection "
                             f"within {timeouts.connect:g}s") from None
        except TimeoutError:
            raise ProxyError(504, "timeout", f"upstream Ollama at {upstream} sent no response within "
                             f"{timeouts.first_byte:g}s (timeouts.first_byte)") from None
        except aiohttp.ClientError as exc:
            raise ProxyError(502, "connect", f"upstream Ollama at {upstream} closed the connection "
                             f"before answering ({type(exc).__name__})") from None

    async def _exchange(self, request: web.Request, endpoint: Endpoint, decision: Decision, raw: bytes,
                        headers: CIMultiDict[str], strip_usage: bool,
                        stats: ReplyStats) -> tuple[int, str, web.StreamResponse]:
        resp = await self._send(request, decision.upstream, raw, headers)
        try:
            status = resp.status
            error_type = classify_upstream_status(status, instrumented=True)
            out_headers = forward_headers(resp.headers)
            ctype = resp.headers.get("Content-Type", "")
            if status == 200 and ctype.startswith(STREAM_TYPES):
                out = web.StreamResponse(status=status, headers=out_headers)
                self._route_headers(out, decision)
                stream_error = await self._relay_stream(request, resp, out, endpoint, stats, strip_usage)
                return status, stream_error or error_type, out
            body = await self._read_body(resp, decision.upstream)
            if status == 200:
                read_reply_body(endpoint, body, stats)
            out = web.Response(status=status, body=body, headers=out_headers)
            self._route_headers(out, decision)
            return status, error_type, out
        except BaseException:
            resp.close()  # unfinished: drop the connection so Ollama stops working on it
            raise
        finally:
            resp.release()

    async def _read_body(self, resp: aiohttp.ClientResponse, upstream: str) -> bytes:
        try:
            async with asyncio.timeout(self.config.timeouts.idle):
                return await resp.read()
        except TimeoutError:
            raise ProxyError(504, "timeout", f"upstream Ollama at {upstream} stopped sending its reply "
                             f"for {self.config.timeouts.idle:g}s (timeouts.idle)") from None
        except aiohttp.ClientError as exc:
            raise ProxyError(502, "stream_interrupted", f"upstream Ollama at {upstream} closed the "
                             f"connection mid-reply ({type(exc).__name__})") from None

    async def _relay_stream(self, request: web.Request, resp: aiohttp.ClientResponse, out: web.StreamResponse,
                            endpoint: Endpoint, stats: ReplyStats, strip_usage: bool) -> str | None:
        """Relay a stream; returns the error_type if it did not end properly."""
        await out.prepare(request)
        loop = asyncio.get_running_loop()
        idle = self.config.timeouts.idle
        max_line = self.config.max_line_bytes
        sse = endpoint.protocol == "openai"
        observer: Any = SSEStreamObserver(stats, strip_usage) if sse else NativeStreamObserver(stats)
        framer: Any = ForwardingFramer(max_line) if strip_usage else LineFramer(max_line)
        error_type: str | None = None
        message = ""
        try:
            async with asyncio.timeout(None) as deadline:
                while True:
                    deadline.reschedule(loop.time() + idle)
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    now = loop.time()
                    if strip_usage:
                        keep = []
                        for piece, parse in framer.feed(chunk):
                            if not parse:
                                keep.append(piece)
                            elif (kept := observer.line(piece[:-1], now)) is not None:
                                keep.append(kept + b"\n")
                        if keep:
                            await out.write(b"".join(keep))
                    else:
                        await out.write(chunk)
                        for line in framer.feed(chunk):
                            observer.line(line, now)
        except TimeoutError:
            error_type = "timeout"
            message = f"upstream Ollama sent nothing for {idle:g}s (timeouts.idle); stream ended by the proxy"
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            error_type = "stream_interrupted"
            message = f"upstream Ollama closed the stream early ({type(exc).__name__})"
        except ConnectionResetError:
            # The client went away while we wrote: stop the upstream generation now.
            resp.close()
            raise asyncio.CancelledError() from None
        tail = framer.flush()
        if tail:
            kept = observer.line(tail, loop.time())
            if strip_usage and kept is not None:
                await out.write(kept)
        unparsed = self.recorder.metrics.unparsed_lines
        if observer.unparsed:
            unparsed.labels(endpoint.name, "invalid").inc(observer.unparsed)
        if framer.overlong:
            unparsed.labels(endpoint.name, "too_long").inc(framer.overlong)
        if error_type is None and stats.error is not None:
            return "stream_interrupted"  # the upstream's own error line already reached the client
        if error_type is None and not stats.finished:
            error_type = "stream_interrupted"
            message = "upstream Ollama ended the stream without its final message"
        if error_type is not None:
            try:
                await out.write(stream_error_line(endpoint.name, message))
            except ConnectionResetError:
                raise asyncio.CancelledError() from None
        await out.write_eof()
        return error_type

    # --- everything else ---------------------------------------------------------------------
    async def _passthrough(self, request: web.Request, start: float) -> web.StreamResponse:
        endpoint = endpoint_label(request.path)
        upstream = self.config.upstream
        error_type = "none"
        try:
            data = request.content if request.body_exists else None
            resp = await self._send(request, upstream, data, forward_headers(request.headers))
            try:
                error_type = classify_upstream_status(resp.status, instrumented=False)
                headers = forward_headers(resp.headers)
                length = resp.content_length
                if request.method != "HEAD" and length is not None and length <= SMALL_BODY:
                    body = await self._read_body(resp, upstream)
                    body = self._add_route_aliases(request, resp, body)
                    return web.Response(status=resp.status, body=body, headers=headers)
                out = web.StreamResponse(status=resp.status, headers=headers)
                if length is not None:
                    out.content_length = length
                await out.prepare(request)
                try:
                    async for chunk in resp.content.iter_any():
                        await out.write(chunk)
                except aiohttp.ClientError:
                    error_type = "stream_interrupted"
                    return out  # cannot signal more: the status line went out already
                await out.write_eof()
                return out
            finally:
                resp.release()
        except ProxyError as err:
            error_type = err.error_type
            return error_response(request.path, err)
        except (asyncio.CancelledError, ConnectionResetError):
            error_type = "client_disconnect"
            raise
        finally:
            self.recorder.request(endpoint, DIRECT_ROUTE, "direct", "none", "none", error_type,
                                  time.perf_counter() - start, None)

    def _add_route_aliases(self, request: web.Request, resp: aiohttp.ClientResponse, body: bytes) -> bytes:
        """List route aliases in /api/tags and /v1/models so clients can discover them."""
        routes = self.routes.aliases()
        if not routes or resp.status != 200 or request.method != "GET" \
                or request.path not in ("/api/tags", "/v1/models"):
            return body
        try:
            doc = json.loads(body)
        except ValueError:
            return body
        if request.path == "/api/tags" and isinstance(doc.get("models"), list):
            by_name = {m.get("name"): m for m in doc["models"] if isinstance(m, dict)}
            for alias, state in routes.items():
                entry = dict(by_name.get(state.stable) or by_name.get(f"{state.stable}:latest") or {})
                entry.update({"name": alias, "model": alias})
                doc["models"].append(entry)
        elif request.path == "/v1/models" and isinstance(doc.get("data"), list):
            for alias in routes:
                doc["data"].append({"id": alias, "object": "model", "created": int(time.time()),
                                    "owned_by": "ollama-sidecar"})
        else:
            return body
        return json.dumps(doc).encode()
