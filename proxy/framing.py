"""Line framing for NDJSON and SSE streams that arrive in arbitrary TCP-sized pieces.

Reads do not align with lines: one line can span several reads and one read can hold
many lines. Exporters that split raw chunks on newlines lose lines, often the final
``done`` one, and with it the token counts. The framer keeps the partial tail between
reads. A line longer than ``max_line`` is still forwarded by the caller but dropped
here (and counted), so a hostile or broken upstream cannot make the proxy buffer
without bound.
"""

from __future__ import annotations


class LineFramer:
    __slots__ = ("max_line", "_tail", "_discarding", "overlong")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._tail = b""
        self._discarding = False  # inside an over-long line: skip until its newline
        self.overlong = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete lines (without their ``\\n``) finished by ``chunk``."""
        if self._tail:
            chunk = self._tail + chunk
            self._tail = b""
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if self._discarding and lines:
            lines.pop(0)  # the end of the over-long line
            self._discarding = False
        if len(tail) > self.max_line:
            if not self._discarding:
                self.overlong += 1
                self._discarding = True
            tail = b""
        elif self._discarding:
            tail = b""
        self._tail = tail
        if self.max_line < len(chunk):
            kept = [line for line in lines if len(line) <= self.max_line]
            self.overlong += len(lines) - len(kept)
            return kept
        return lines

    def flush(self) -> bytes | None:
        """The unterminated last line at end of stream, if any."""
        tail, self._tail = self._tail, b""
        self._discarding = False
        return tail or None


class ForwardingFramer:
    """Splits a stream into lines the caller may drop, without ever losing bytes.

    Used where the proxy must edit a stream (remove the usage event it asked for), so it
    forwards whole lines instead of raw chunks. A line longer than ``max_line`` is
    released as raw fragments as soon as it crosses the limit: it is forwarded, never
    parsed, never held in memory whole.
    """

    __slots__ = ("max_line", "_tail", "_raw", "overlong")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._tail = b""
        self._raw = False  # inside an over-long line: pass bytes through until its newline
        self.overlong = 0

    def feed(self, chunk: bytes) -> list[tuple[bytes, bool]]:
        """``(piece, parse)`` pairs: complete lines with their ``\\n`` (parse=True) or raw
        fragments of an over-long line (parse=False)."""
        out: list[tuple[bytes, bool]] = []
        if self._raw:
            nl = chunk.find(b"\n")
            if nl < 0:
                return [(chunk, False)]
            out.append((chunk[: nl + 1], False))
            chunk = chunk[nl + 1:]
            self._raw = False
        data = self._tail + chunk if self._tail else chunk
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            out.append((data[start: nl + 1], nl - start <= self.max_line))
            if nl - start > self.max_line:
                self.overlong += 1
            start = nl + 1
        tail = data[start:]
        if len(tail) > self.max_line:
            self.overlong += 1
            self._raw = True
            out.append((tail, False))
            tail = b""
        self._tail = tail
        return out

    def flush(self) -> bytes | None:
        tail, self._tail = self._tail, b""
        self._raw = False
        return tail or None
