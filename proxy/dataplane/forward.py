"""Forwarding: the request path between a client and Ollama.

Two paths. Instrumented endpoints (chat, generate, embeddings in both APIs) are read,
routed and measured: the JSON body is parsed (bounded by ``max_body_bytes``) to learn
the model, the reply is observed line by line for tokens and timings. Everything else
streams through untouched with a counter and a duration.

Streams are relayed chunk by chunk as they arrive; nothing waits for the end. The only
edit the proxy ever makes to a stream is removing the usage event it asked for on
behalf of an OpenAI client that did not (see :class:`proxy.dataplane.observe.SSEStreamObserver`).
A client that goes away cancels the handler (``handler_cancellation``), which closes the
upstream connection at once so Ollama stops generating for nobody.
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
from multidict import CIMultiDict

from proxy.common.jsonutil import json_or_none, parse_json
from proxy.config import ProxyConfig
from proxy.control.routing import Decision, RouteTable
from proxy.dataplane.admission import AdmissionControl
from proxy.dataplane.errors import (ProxyError, classify_upstream_status, describe_body, error_body, error_response,
                                    stream_error_line)
from proxy.dataplane.framing import ForwardingFramer, LineFramer, LongLine
from proxy.dataplane.instrument import Recorder, RequestRecord
from proxy.dataplane.observe import (ENDPOINTS, Endpoint, NativeStreamObserver, ReplyStats, SSEStreamObserver,
                                     endpoint_label, read_long_object, read_reply_body)
from proxy.dataplane.passthrough import Passthrough
from proxy.dataplane.sessions import extract_session
from proxy.dataplane.upstream import Upstream, forward_headers, relay_chunks
from proxy.fleet import fleet
from proxy.fleet.balancer import Choice
from proxy.fleet.fleet import Fleet
from proxy.fleet.servers import Server
from proxy.metrics import NO_MODEL, NO_ROUTE, SERVER_SIDE_ERRORS, Arm, ErrorType
from proxy.quality.feedback import request_id_from
from proxy.tenants.tenants import Tenants

log = logging.getLogger("ollama_sidecar.proxy")

STREAM_TYPES = ("application/x-ndjson", "text/event-stream")
MAX_MODEL_NAME = 512


def header_value(text: str) -> str:
    """A client-supplied name made safe for a response header (no CR/LF, ASCII only)."""
    return text if text.isascii() and text.isprintable() else urllib.parse.quote(text, safe=":/@._-+ ")


class Forwarder:
    """The catch-all handler; one per application."""

    def __init__(self, config: ProxyConfig, recorder: Recorder, routes: RouteTable,
                 admission: AdmissionControl, fleet: Fleet, on_result: Any = None, quality: Any = None,
                 tenants: Tenants | None = None) -> None:
        self.recorder = recorder
        self.routes = routes
        self.admission = admission
        self.fleet = fleet
        self.upstream = Upstream(config.timeouts)
        self.passthrough = Passthrough(self.upstream, recorder, routes, fleet)
        # Called with (decision, error_type) after each routed request (the breaker).
        self.on_result = on_result
        self.quality = quality  # proxy.quality.signals.QualitySignals: sessions, regenerations, feedback ids
        self.tenants = tenants or Tenants(config, recorder.metrics)
        self.update_config(config)

    def update_config(self, config: ProxyConfig) -> None:
        """Adopt a (reloaded) config for requests that arrive from now on."""
        self.config = config
        self.upstream.timeouts = config.timeouts
        self.tenants.update_config(config)
        # The data-plane key is the gateway's credential: Ollama (maybe a shared or remote
        # host) never sees it.
        self._drop = frozenset({"authorization"}) if config.tenants else frozenset()

    @property
    def session(self) -> aiohttp.ClientSession | None:
        return self.upstream.session

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        await self.upstream.close()

    # --- entry -------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        start = time.perf_counter()
        path = request.path
        try:
            tenant = self.authorize(request)
        except ProxyError as err:
            self.recorder.record(RequestRecord(endpoint_label(path), error_type=err.error_type,
                                               status=err.status, duration=time.perf_counter() - start))
            return error_response(path, err)
        endpoint = ENDPOINTS.get(path) if request.method == "POST" else None
        if endpoint is None:
            return await self.passthrough.handle(request, start, self._drop)
        return await self._instrumented(request, endpoint, start, tenant)

    def authorize(self, request: web.Request) -> str | None:
        """The request's tenant (None when no keys are configured); 401 for a missing or
        unknown key."""
        if not self.tenants.required:
            return None
        tenant = self.tenants.identify(request.headers.get("Authorization"))
        if tenant is None:
            raise ProxyError(401, ErrorType.UNAUTHORIZED, "gateway token missing or invalid: send "
                             "'Authorization: Bearer <key>' with a key configured in auth.api_keys or auth.tenants")
        return tenant

    # --- instrumented endpoints -------------------------------------------------------------
    async def _read_json(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ProxyError(413, ErrorType.BAD_REQUEST, f"request body of {request.content_length} bytes is "
                             f"over the proxy's limit of {limit} bytes (max_body_bytes)")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ProxyError(413, ErrorType.BAD_REQUEST, f"request body is over the proxy's limit of "
                             f"{limit} bytes (max_body_bytes)") from None
        if not raw.strip():
            raise ProxyError(400, ErrorType.BAD_REQUEST, "missing request body")
        try:
            body = parse_json(raw)
        except ValueError as exc:
            raise ProxyError(400, ErrorType.BAD_REQUEST, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ProxyError(400, ErrorType.BAD_REQUEST, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ProxyError(400, ErrorType.BAD_REQUEST, "model is required")
        if len(model) > MAX_MODEL_NAME or not model.isprintable():
            raise ProxyError(400, ErrorType.BAD_REQUEST, "model name is too long or contains control characters")
        return raw, body

    async def _instrumented(self, request: web.Request, endpoint: Endpoint, start: float,
                            tenant: str | None = None) -> web.StreamResponse:
        path = endpoint.name
        stats = ReplyStats()
        rec = RequestRecord(path, start=start, stats=stats, tenant=tenant)
        request_id = request_id_from(request.headers.get("X-Request-ID"))
        decision = Decision(NO_ROUTE, Arm.DIRECT, NO_MODEL, self.config.upstream, request_id=request_id)
        session_raw: str | None = None
        messages: Any = None
        admitted = False
        try:
            raw, body = await self._read_json(request)
            if tenant is not None:
                refusal = self.tenants.admit(tenant)
                if refusal is not None:
                    raise ProxyError(429, ErrorType.RATE_LIMITED, refusal.message(tenant),
                                     headers={"Retry-After": str(refusal.retry_after)}, code="rate_limit_exceeded",
                                     openai_type="tokens" if "tokens" in refusal.limit else "requests")
                admitted = True
            requested = body["model"]
            messages = body.get("messages")
            session_raw = extract_session(self.config.session_sources, request.headers, body)
            rec.session = self.recorder.session_label(session_raw)
            sources = self.routes.session_sources(requested)
            key = session_raw if sources is None else extract_session(sources, request.headers, body)
            decision = self.routes.decide(requested, key, request_id)
            rec.route, rec.arm = decision.route, decision.arm
            rec.model, rec.model_admitted = self.recorder.model_label(decision.model, decision.route != NO_ROUTE)
            choice = self.fleet.choose(decision.model, key, not endpoint.generates) \
                or await self._choose(decision.model, key, embedding=not endpoint.generates)

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
                # ASCII escapes: a lone surrogate in a prompt survives as Ollama would read it.
                raw = json.dumps(body, separators=(",", ":")).encode()

            headers = forward_headers(request.headers, frozenset({"accept-encoding"}) | self._drop)
            in_flight = self.recorder.metrics.in_flight.labels(decision.route, decision.arm, rec.model)
            held: list[Server] = []
            async with self.admission.slot():
                in_flight.inc()
                try:
                    rec.status, rec.error_type, response = await self._exchange(
                        request, endpoint, decision, choice, raw, headers, strip_usage, stats, rec, held)
                finally:
                    in_flight.dec()
                    for server in held:
                        self.fleet.release(server, choice.model)
                        self.fleet.outcome(server, fleet.ERROR if rec.error_type in SERVER_SIDE_ERRORS else fleet.OK)
                        if rec.load_wait:
                            self.fleet.cold_load(server, decision.model)
            return response
        except ProxyError as err:
            rec.error_type, rec.status = err.error_type, err.status
            response = error_response(path, err)
            self._route_headers(response, decision)
            return response
        except asyncio.CancelledError:
            # A client that hangs up right after the last event (SDKs close on [DONE]) got
            # everything: that is a success, not a disconnect.
            if not (stats.finished and rec.error_type == ErrorType.NONE):
                rec.error_type = ErrorType.CLIENT_DISCONNECT
            raise
        except Exception:
            # A bug of ours must not cost the client its protocol or the proxy its life.
            log.exception("internal error on %s (model %s)", path, header_value(decision.model))
            rec.error_type, rec.status = ErrorType.INTERNAL, 500
            return error_response(path, ProxyError(500, ErrorType.INTERNAL, "internal error in "
                                                   "ollama-sidecar; see the proxy's log"))
        finally:
            rec.duration = time.perf_counter() - start
            try:
                self.recorder.record(rec)
                if self.quality is not None:  # first: it marks regenerations, which the rollouts count
                    self.quality.observe(path, decision, rec, session_raw, messages,
                                         request.headers.get("Authorization"))
                if self.on_result is not None and decision.route != NO_ROUTE:
                    self.on_result(decision, rec)
            finally:
                # Whatever failed above, the tenant gets its slot back: a leak would lock it
                # out at its concurrency limit for good.
                if tenant is not None:
                    self.tenants.finish(tenant, rec, admitted)

    @staticmethod
    def _route_headers(response: web.StreamResponse, d: Decision) -> None:
        response.headers["X-Sidecar-Route"] = header_value(d.route)
        response.headers["X-Sidecar-Arm"] = d.arm
        response.headers["X-Sidecar-Model"] = header_value(d.model)
        if d.request_id:
            response.headers["X-Request-ID"] = d.request_id
        if d.server:
            response.headers["X-Sidecar-Upstream"] = header_value(d.server)

    async def _choose(self, model: str, session: str | None, embedding: bool) -> Choice:
        """For a model no cached list has: one fresh look at every server first; installed
        nowhere, it is Ollama's own 404."""
        choice = None
        if self.upstream.session is not None:
            await self.fleet.refresh_models(self.upstream.session)
            choice = self.fleet.choose(model, session, embedding)
        if choice is None:
            raise ProxyError(404, ErrorType.MODEL_NOT_FOUND, f'model "{model}" not found, try pulling it first')
        return choice

    async def _send(self, request: web.Request, decision: Decision, choice: Choice, raw: bytes,
                    headers: CIMultiDict[str], held: list[Server]) -> tuple[aiohttp.ClientResponse, Decision]:
        """Send to the best server; before the first byte reached the client, a refused or
        timed-out connection, a busy 503 or another 5xx moves the request to the next one
        (at most ``retries`` times). The server sending the reply is appended to ``held``."""
        servers = choice.servers[: self.config.retries + 1]
        for i, server in enumerate(servers):
            last = i == len(servers) - 1
            self.fleet.acquire(server, choice.model)
            try:
                resp = await self.upstream.send(request, server.url, raw, headers)
            except ProxyError as err:
                self.fleet.release(server, choice.model)
                self.fleet.outcome(server, fleet.CONNECT, connect=True)
                if last or err.error_type not in (ErrorType.CONNECT, ErrorType.TIMEOUT):
                    if choice.all_down:
                        err.message += " (every server that has the model is down; tried anyway)"
                    raise
                self.fleet.retried(server, fleet.RETRY_TIMEOUT if err.error_type == ErrorType.TIMEOUT
                                   else fleet.RETRY_CONNECT)
                continue
            if resp.status >= 500 and not last:
                resp.close()
                self.fleet.release(server, choice.model)
                self.fleet.outcome(server, fleet.ERROR)
                self.fleet.retried(server, fleet.RETRY_BUSY if resp.status == 503 else fleet.RETRY_SERVER_ERROR)
                continue
            held.append(server)
            d = decision
            return resp, Decision(d.route, d.arm, d.model, server.url, server.name, d.request_id)
        raise AssertionError("unreachable: the last server's answer is returned")

    async def _exchange(self, request: web.Request, endpoint: Endpoint, decision: Decision, choice: Choice,
                        raw: bytes, headers: CIMultiDict[str], strip_usage: bool, stats: ReplyStats,
                        rec: RequestRecord, held: list[Server]) -> tuple[int, ErrorType, web.StreamResponse]:
        resp, decision = await self._send(request, decision, choice, raw, headers, held)
        rec.upstream = decision.server
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
            limit = self.config.max_parsed_reply_bytes
            if resp.content_length is not None and resp.content_length > limit:
                head, complete = b"", False
            else:
                head, complete = await self.upstream.read_head(resp, decision.upstream, limit)
            if not complete:
                long_out, broke = await self._relay_long_reply(request, resp, out_headers, head, endpoint,
                                                               decision, stats)
                return status, broke or error_type, long_out
            if status == 200:
                obj = json_or_none(head)
                if not isinstance(obj, dict):
                    raise ProxyError(502, ErrorType.UPSTREAM_INVALID, f"upstream Ollama at {decision.upstream} answered "
                                     f"200 with a body that is not a JSON object: {describe_body(head)}")
                read_reply_body(endpoint, obj, stats)
            elif status >= 400 and not isinstance(json_or_none(head), dict):
                # An error page from something in between (a load balancer's HTML 502):
                # same status, but in the client's protocol so its SDK can show it.
                for name in ("Content-Type", "Content-Encoding"):
                    out_headers.popall(name, None)
                out = web.Response(status=status, headers=out_headers, content_type="application/json",
                                   body=error_body(endpoint.name, status, f"upstream Ollama at {decision.upstream} "
                                                   f"answered HTTP {status}: {describe_body(head)}"))
                self._route_headers(out, decision)
                return status, error_type, out
            out = web.Response(status=status, body=head, headers=out_headers)
            self._route_headers(out, decision)
            return status, error_type, out
        except BaseException:
            resp.close()  # unfinished: drop the connection so Ollama stops working on it
            raise
        finally:
            resp.release()

    async def _relay_long_reply(self, request: web.Request, resp: aiohttp.ClientResponse,
                                headers: CIMultiDict[str], head: bytes, endpoint: Endpoint,
                                decision: Decision, stats: ReplyStats) -> tuple[web.StreamResponse, ErrorType | None]:
        """Relay a non-stream reply longer than ``max_parsed_reply_bytes`` as it arrives.

        Holding a 300 MiB embedding reply whole took the proxy to a gigabyte. Past the
        bound the reply is forwarded unchecked; its two ends still give the counts.
        Returns the response and the error_type if the upstream broke after the status
        line went out."""
        out = web.StreamResponse(status=resp.status, headers=headers)
        if resp.content_length is not None:
            out.content_length = resp.content_length
        self._route_headers(out, decision)
        await out.prepare(request)
        ends = LongLine(head)

        async def write(chunk: bytes) -> None:
            ends.extend(chunk)
            await out.write(chunk)

        self.recorder.metrics.unparsed_lines.labels(endpoint.name, "too_long").inc()
        try:
            if head:
                await out.write(head)
            await relay_chunks(resp, self.config.timeouts.idle, write)
        except ConnectionResetError:
            resp.close()
            raise asyncio.CancelledError() from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status line went out: breaking the connection is the only honest signal.
            resp.close()
            if request.transport is not None:
                request.transport.abort()
            return out, ErrorType.TIMEOUT if isinstance(exc, TimeoutError) else ErrorType.STREAM_INTERRUPTED
        await out.write_eof()
        if resp.status == 200 and (obj := read_long_object(ends)) is not None:
            read_reply_body(endpoint, obj, stats)
        return out, None

    async def _relay_stream(self, request: web.Request, resp: aiohttp.ClientResponse, out: web.StreamResponse,
                            endpoint: Endpoint, stats: ReplyStats, strip_usage: bool) -> ErrorType | None:
        """Relay a stream; returns the error_type if it did not end properly."""
        await out.prepare(request)
        idle = self.config.timeouts.idle
        max_line = self.config.max_line_bytes
        sse = endpoint.protocol == "openai"
        observer: Any = SSEStreamObserver(stats, strip_usage) if sse else NativeStreamObserver(stats)
        framer: Any = ForwardingFramer(max_line) if strip_usage else LineFramer(max_line)
        error_type: ErrorType | None = None
        message = ""
        last = b""  # ends with the last bytes the client received: is a line or an event open?

        async def relay_raw(chunk: bytes) -> None:
            nonlocal last
            now = time.perf_counter()
            forward, lines = framer.feed(chunk)
            if forward:
                await out.write(forward)
                last = forward if len(forward) > 1 else last[-1:] + forward
            for line in lines:
                observer.line(line, now)
            if framer.long_lines:
                for long_line in framer.long_lines:
                    observer.long_line(long_line, now)
                framer.long_lines.clear()

        async def relay_edited(chunk: bytes) -> None:
            nonlocal last
            now = time.perf_counter()
            keep = []
            for piece, parse in framer.feed(chunk):
                if not parse:
                    keep.append(piece)
                elif (kept := observer.line(piece[:-1], now)) is not None:
                    keep.append(kept + b"\n")
            if keep:
                forward = b"".join(keep)
                await out.write(forward)
                last = forward if len(forward) > 1 else last[-1:] + forward

        try:
            await relay_chunks(resp, idle, relay_edited if strip_usage else relay_raw)
        except ConnectionResetError:
            # The client went away while we wrote: stop the upstream generation now.
            resp.close()
            raise asyncio.CancelledError() from None
        except TimeoutError:
            error_type = ErrorType.TIMEOUT
            message = f"upstream Ollama sent nothing for {idle:g}s (timeouts.idle); stream ended by the proxy"
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            error_type = ErrorType.STREAM_INTERRUPTED
            message = f"upstream Ollama closed the stream early ({type(exc).__name__})"
        except Exception:
            # A bug of ours after the status line went out: end the stream in the client's
            # protocol rather than writing a second response into it.
            log.exception("internal error relaying a stream on %s", endpoint.name)
            resp.close()
            error_type = ErrorType.INTERNAL
            message = "internal error in ollama-sidecar; see the proxy's log"
        mid_line = framer.mid_line
        tail = framer.flush()
        if error_type is None and tail is not None and is_complete_line(tail, sse):
            # The upstream ended without a final newline: the line is whole, so it is relayed.
            now = time.perf_counter()
            if strip_usage:
                kept = observer.line(tail, now)
            else:
                observer.line(tail, now)
                kept = tail
            if kept:
                await out.write(kept)
                last = kept if len(kept) > 1 else last[-1:] + kept
        elif tail is not None and error_type is None:
            error_type = ErrorType.STREAM_INTERRUPTED  # a broken fragment is never relayed
            message = "upstream Ollama ended the stream in the middle of a line"
        for long_line in framer.long_lines:
            observer.long_line(long_line, time.perf_counter())
        unparsed = self.recorder.metrics.unparsed_lines
        if observer.unparsed:
            unparsed.labels(endpoint.name, "invalid").inc(observer.unparsed)
        if framer.overlong:
            unparsed.labels(endpoint.name, "too_long").inc(framer.overlong)
        if error_type is None and stats.error is not None:
            return ErrorType.STREAM_INTERRUPTED  # the upstream's own error line already reached the client
        if error_type is None and not stats.finished:
            error_type = ErrorType.STREAM_INTERRUPTED
            message = "upstream Ollama ended the stream without its final message"
        if error_type is not None:
            try:
                await out.write(line_break(last, mid_line, sse) + stream_error_line(endpoint.name, message))
            except ConnectionResetError:
                raise asyncio.CancelledError() from None
        await out.write_eof()
        return error_type


def is_complete_line(line: bytes, sse: bool) -> bool:
    """Whether an unterminated last line is a whole message (JSON, or SSE's ``[DONE]``)."""
    if sse:
        if not line.startswith(b"data:"):
            return not line.strip()
        payload = line[5:].strip()
        return payload == b"[DONE]" or json_or_none(payload) is not None
    return json_or_none(line) is not None


def line_break(last: bytes, mid_line: bool, sse: bool) -> bytes:
    """What must follow the bytes already sent for the next line (or SSE event) to stand
    on its own: ends a cut over-long line, and on SSE the open event."""
    if not last:
        return b""
    if mid_line:
        return b"\n\n" if sse else b"\n"
    if sse and not last.endswith(b"\n\n"):
        return b"\n"
    return b""
