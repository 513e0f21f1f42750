"""Line framing for NDJSON and SSE streams that arrive in arbitrary TCP-sized pieces.

Reads do not align with lines: one line can span several reads and one read can hold
many lines. Exporters that split raw chunks on newlines lose lines, often the final
``done`` one, and with it the token counts. The framers keep the partial tail between
reads.

Both framers forward whole lines only. Ollama writes each line in one go, so a held
tail waits for microseconds; in exchange, when Ollama cuts a stream mid-line, the
client never receives half a JSON object glued to the proxy's error line (every client
parses line by line, and a broken line surfaces as a parse error instead of the
message). A line longer than ``max_line`` is the exception: it is forwarded as it
arrives and never held whole, so a hostile or broken upstream cannot make the proxy
buffer without bound; only its two ends are kept (:class:`LongLine`), which is enough
to read the counts of a final object carrying a long ``context``.
"""

from __future__ import annotations

# How much of each end of an over-long line is kept: Ollama's final object puts
# ``done`` in its first hundred bytes and the counts and durations in its last two hundred.
LONG_LINE_ENDS = 4096


class LongLine:
    """The first and last bytes of a line too long to hold, and its length."""

    __slots__ = ("head", "tail", "size")

    def __init__(self, data: bytes = b"") -> None:
        self.head = b""
        self.tail = b""
        self.size = 0
        if data:
            self.extend(data)

    def extend(self, data: bytes) -> None:
        self.size += len(data)
        if len(self.head) < LONG_LINE_ENDS:
            self.head += data[: LONG_LINE_ENDS - len(self.head)]
        self.tail = (self.tail + data[-LONG_LINE_ENDS:])[-LONG_LINE_ENDS:]


class LineFramer:
    """Splits a stream into lines; says which bytes may go to the client now.

    ``feed`` returns ``(forward, lines)``: the bytes that complete lines (plus the
    forwarded part of an over-long line) and the complete lines themselves without their
    ``\\n``. Over-long lines finished by the chunk are appended to ``long_lines`` for the
    caller to read and clear.
    """

    __slots__ = ("max_line", "_tail", "_long", "long_lines", "overlong")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._tail = b""  # an unterminated line not forwarded yet (at most max_line bytes)
        self._long: LongLine | None = None  # inside an over-long line, already being forwarded
        self.long_lines: list[LongLine] = []
        self.overlong = 0

    @property
    def mid_line(self) -> bool:
        """Part of an unterminated line has reached the client (only ever an over-long one)."""
        return self._long is not None

    def feed(self, chunk: bytes) -> tuple[bytes, list[bytes]]:
        prefix = b""
        if self._long is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._long.extend(chunk)
                return chunk, []
            self._long.extend(chunk[:nl])
            self.long_lines.append(self._long)
            self._long = None
            prefix, chunk = chunk[: nl + 1], chunk[nl + 1:]
        data = self._tail + chunk if self._tail else chunk
        end = data.rfind(b"\n") + 1
        if end == len(data):
            complete, rest = data, b""
        else:
            complete, rest = data[:end], data[end:]
        self._tail = b""
        lines: list[bytes] = []
        if complete:
            lines = complete.split(b"\n")
            lines.pop()
            if len(complete) > self.max_line:
                kept = []
                for line in lines:
                    if len(line) <= self.max_line:
                        kept.append(line)
                    else:
                        self.overlong += 1
                        self.long_lines.append(LongLine(line))
                lines = kept
        if len(rest) > self.max_line:
            self.overlong += 1
            self._long = LongLine(rest)
            return prefix + complete + rest, lines
        self._tail = rest
        return prefix + complete, lines

    def flush(self) -> bytes | None:
        """At end of stream: the unterminated last line that was held back, if any."""
        tail, self._tail = self._tail, b""
        if self._long is not None:
            self.long_lines.append(self._long)
            self._long = None
        return tail or None


class ForwardingFramer:
    """Splits a stream into lines the caller may drop, without ever losing bytes.

    Used where the proxy must edit a stream (remove the usage event it asked for), so it
    forwards whole lines instead of raw chunks. A line longer than ``max_line`` is
    released as raw fragments as soon as it crosses the limit: it is forwarded, never
    parsed, never held in memory whole.
    """

    __slots__ = ("max_line", "_tail", "_raw", "overlong")
    long_lines: tuple[LongLine, ...] = ()  # never keeps an over-long line's ends: it only forwards

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._tail = b""
        self._raw = False  # inside an over-long line: pass bytes through until its newline
        self.overlong = 0

    @property
    def mid_line(self) -> bool:
        """Part of an unterminated line has reached the client (only ever an over-long one)."""
        return self._raw

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
