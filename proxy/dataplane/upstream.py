"""The connection to Ollama: one pooled client session, timeouts, and failures in words.

Every way reaching Ollama can fail becomes a :class:`ProxyError` with an ``error_type``
and a message a human understands ("upstream Ollama at http://gpu1:11434 refused the
connection"), so the two forwarding paths never translate aiohttp exceptions themselves.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.config import Timeouts
from proxy.dataplane.errors import ProxyError
from proxy.metrics import ErrorType

# RFC 9110 hop-by-hop headers, plus those aiohttp computes itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})


def forward_headers(headers: Any, drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones (and those the Connection header lists)."""
    connection = headers.get("Connection", "")
    listed = {h.strip().lower() for h in connection.split(",")} if connection else set()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lname = name.lower()
        if lname not in HOP_BY_HOP and lname not in listed and lname not in drop:
            out.add(name, value)
    return out


class Upstream:
    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No connection limit: 500 concurrent streams must not queue behind a pool of 100.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=60)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, request: web.Request, upstream: str, data: Any, headers: CIMultiDict[str],
                   *, streaming_body: bool = False) -> aiohttp.ClientResponse:
        """Send ``request`` to ``upstream`` and wait for the reply's headers.

        With a body read whole, ``first_byte`` bounds the wait for the answer. With a body
        streamed through (a blob upload can take longer than any sensible first-byte
        limit), ``first_byte`` bounds each read instead.
        """
        assert self.session is not None
        t = self.timeouts
        url = URL(upstream + request.raw_path, encoded=True)
        # aiohttp's sock_read bounds every read of the reply, headers and body alike: the
        # larger of the two limits, so a quiet /api/pull is not cut sooner than `idle`.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect,
                                        sock_read=max(t.first_byte, t.idle) if streaming_body else None)
        try:
            if streaming_body:
                return await self.session.request(request.method, url, data=data, headers=headers,
                                                  allow_redirects=False, timeout=timeout)
            async with asyncio.timeout(t.first_byte):
                return await self.session.request(request.method, url, data=data, headers=headers,
                                                  allow_redirects=False, timeout=timeout)
        except aiohttp.ClientConnectorError as exc:
            why = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)
            raise ProxyError(502, ErrorType.CONNECT, f"upstream Ollama at {upstream} refused the connection "
                             f"or is unreachable ({why})") from None
        except aiohttp.ConnectionTimeoutError:
            raise ProxyError(502, ErrorType.CONNECT, f"upstream Ollama at {upstream} did not accept a connection "
                             f"within {t.connect:g}s (timeouts.connect)") from None
        except (TimeoutError, aiohttp.SocketTimeoutError):
            raise ProxyError(504, ErrorType.TIMEOUT, f"upstream Ollama at {upstream} sent no response within "
                             f"{t.first_byte:g}s (timeouts.first_byte)") from None
        except aiohttp.ClientError as exc:
            raise ProxyError(502, ErrorType.CONNECT, f"upstream Ollama at {upstream} closed the connection "
                             f"before answering ({type(exc).__name__})") from None

    async def read_body(self, resp: aiohttp.ClientResponse, upstream: str) -> bytes:
        """The whole reply (for bodies known to be small)."""
        body, _ = await self.read_head(resp, upstream, None)
        return body

    async def read_head(self, resp: aiohttp.ClientResponse, upstream: str,
                        limit: int | None) -> tuple[bytes, bool]:
        """Up to about ``limit`` bytes of the reply, and whether that is all of it.

        ``timeouts.idle`` bounds each wait for more bytes, not the whole body: a slow but
        steady reply is not a dead one."""
        parts: list[bytes] = []
        size = 0
        idle = self.timeouts.idle
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:
                while limit is None or size <= limit:
                    deadline.reschedule(loop.time() + idle)
                    chunk = await resp.content.readany()
                    if not chunk:
                        return b"".join(parts), True
                    parts.append(chunk)
                    size += len(chunk)
        except TimeoutError:
            raise ProxyError(504, ErrorType.TIMEOUT, f"upstream Ollama at {upstream} stopped sending its reply "
                             f"for {idle:g}s (timeouts.idle)") from None
        except aiohttp.ClientError as exc:
            raise ProxyError(502, ErrorType.STREAM_INTERRUPTED, f"upstream Ollama at {upstream} closed the "
                             f"connection mid-reply ({type(exc).__name__})") from None
        return b"".join(parts), False


async def relay_chunks(resp: aiohttp.ClientResponse, idle: float,
                       handle: Callable[[bytes], Awaitable[None]]) -> None:
    """Hand each chunk of ``resp`` to ``handle`` as it arrives; TimeoutError when the
    upstream is silent for ``idle`` seconds. The clock runs only while waiting for the
    upstream: a slow client (``handle`` waiting on backpressure) is not the upstream's fault."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as deadline:
        while True:
            deadline.reschedule(loop.time() + idle)
            chunk = await resp.content.readany()
            deadline.reschedule(None)
            if not chunk:
                return
            await handle(chunk)
