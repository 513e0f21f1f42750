"""Turn an ``Inference`` into an HTTP reply, streamed or whole, for any wire format.

The four generating endpoints differ only in how a token, the final object, an error and a
whole reply are spelled; the fates (500 before streaming, error line, dropped connection,
client leaving, the scheduler's 503) are handled once here so they behave identically on every endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web

from proxy.simulator.inference import (CANCELLED, CUT, HANG, MIDSTREAM_ERROR, MIDSTREAM_ERROR_OUTCOME, ClientGone,
                                       Inference)
from proxy.simulator.scheduler import BUSY_MESSAGE, ServerBusy
from proxy.simulator.state import SPLIT_WRITES_KEY
from proxy.simulator.wire import StreamWriter


class WireFormat(Protocol):
    """How one endpoint spells its replies."""

    content_type: str

    def chunk(self, text: str) -> bytes: ...

    def final(self, inference: Inference) -> list[bytes]: ...

    def error_event(self, message: str) -> bytes: ...

    def whole(self, text: str, inference: Inference) -> web.Response: ...

    def error(self, status: int, message: str) -> web.Response: ...


def client_gone(request: web.Request):
    """A probe for 'the client hung up', usable without handler cancellation."""
    return lambda: request.transport is None or request.transport.is_closing()


def drop_connection(request: web.Request) -> web.Response:
    """Close the socket without a reply; the returned response is never sent."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)


async def serve(request: web.Request, inference: Inference, fmt: WireFormat, stream: bool) -> web.StreamResponse:
    try:
        message = await inference.begin()
        if message is not None:
            return fmt.error(500, message)
        if not stream:
            return await _serve_whole(request, inference, fmt)
        response = web.StreamResponse(status=200, headers={"Content-Type": fmt.content_type})
        await response.prepare(request)
        writer = StreamWriter(response, inference.rng, request.app[SPLIT_WRITES_KEY])
        async for text in inference.tokens():
            await writer.send(fmt.chunk(text))
        if inference.outcome == MIDSTREAM_ERROR_OUTCOME:
            await writer.send(fmt.error_event(MIDSTREAM_ERROR))
        elif inference.outcome == CUT:
            await writer.send_partial_then_cut(fmt.chunk("cut"), request)
            return response
        else:
            for event in fmt.final(inference):
                await writer.send(event)
        await writer.flush()
        await response.write_eof()
        return response
    except ServerBusy:
        return fmt.error(503, BUSY_MESSAGE)
    except ClientGone:
        return drop_connection(request)
    except (ConnectionError, asyncio.CancelledError) as exc:
        if inference.outcome != HANG:
            inference.outcome = CANCELLED
        if isinstance(exc, asyncio.CancelledError):
            raise
        return drop_connection(request)
    finally:
        inference.end()


async def _serve_whole(request: web.Request, inference: Inference, fmt: WireFormat) -> web.StreamResponse:
    pieces = [text async for text in inference.tokens()]
    if inference.outcome == MIDSTREAM_ERROR_OUTCOME:
        return fmt.error(500, MIDSTREAM_ERROR)
    if inference.outcome == CUT:
        return drop_connection(request)
    return fmt.whole("".join(pieces), inference)
