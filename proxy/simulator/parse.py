"""Request bodies read and checked the way Ollama's Go handlers do, with its messages.

Clients and the proxy branch on these exact statuses and strings (400 ``missing request
body``, 404 ``model 'x' not found``), so the simulator reproduces them rather than
aiohttp's defaults.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from aiohttp import web

from proxy.simulator.state import SimulatorState

ErrorFn = Callable[[int, str], web.Response]

_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class BadRequest(Exception):
    """Carries the ready error response up to the handler."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _go_json_error(text: str, exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(text.rstrip()):
        return "unexpected EOF"
    return f"invalid character {text[exc.pos]!r} looking for beginning of value"


async def read_body(request: web.Request, error: ErrorFn, empty_message: str = "missing request body") -> dict[str, Any]:
    """The JSON object in the body, or ``BadRequest`` with Ollama's 400."""
    raw = await request.read()
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise BadRequest(error(400, empty_message))
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(error(400, _go_json_error(text, exc))) from None
    if not isinstance(body, dict):
        raise BadRequest(error(400, f"json: cannot unmarshal {type(body).__name__} into Go value of type api.Request"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        # Go decodes into *bool: "false" (a string) is an error, not a false.
        raise BadRequest(error(400, f"json: cannot unmarshal {_go_type(stream)} into Go struct field .stream of type bool"))
    return body


def _go_type(value: Any) -> str:
    return {str: "string", int: "number", float: "number", list: "array", dict: "object"}.get(type(value), "value")


def require_model(state: SimulatorState, body: dict[str, Any], error: ErrorFn, key: str = "model") -> tuple[str, str]:
    """(name as asked, profile name) or ``BadRequest`` with 400 / 404 like Ollama."""
    asked = body.get(key)
    if asked is None or asked == "":
        raise BadRequest(error(400, "model is required"))
    if not isinstance(asked, str):
        raise BadRequest(error(400, f"json: cannot unmarshal {type(asked).__name__} into Go struct field .{key} of type string"))
    resolved = state.resolve(asked)
    if resolved is None:
        state.record(asked, "not_found")
        raise BadRequest(error(404, f"model '{asked}' not found"))
    return asked, resolved


def keep_alive_seconds(value: Any, error: ErrorFn) -> float | None:
    """Ollama's ``keep_alive``: seconds as a number, or a Go duration string ("5m", "-1")."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(error(400, "json: cannot unmarshal bool into Go struct field .keep_alive"))
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if body == "0" or (body and body.replace(".", "", 1).isdigit() and sign < 0):
            return 0.0 if body == "0" else -1.0
        parts = _DURATION.findall(body)
        if body and "".join(n + u for n, u in parts) == body:
            return sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    raise BadRequest(error(400, f'time: invalid duration "{value}"'))


def stream_flag(body: dict[str, Any], default: bool) -> bool:
    value = body.get("stream")  # a bool or None: read_body refused anything else
    return default if value is None else value


def num_predict(body: dict[str, Any]) -> int | None:
    options = body.get("options")
    value = options.get("num_predict") if isinstance(options, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
