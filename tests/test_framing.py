"""Framing survives any split of the byte stream."""

from __future__ import annotations

import random

from proxy.framing import ForwardingFramer, LineFramer


def random_splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 40))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def test_line_framer_yields_every_line_whatever_the_split():
    rng = random.Random(7)
    lines = [f'{{"n":{i},"pad":"{"x" * rng.randint(0, 50)}"}}'.encode() for i in range(200)]
    data = b"\n".join(lines) + b"\n"
    for _ in range(50):
        framer = LineFramer(max_line=1 << 20)
        got = [line for piece in random_splits(data, rng) for line in framer.feed(piece)]
        assert got == lines and framer.flush() is None


def test_line_framer_skips_overlong_lines_and_counts_them():
    framer = LineFramer(max_line=10)
    data = b"short\n" + b"y" * 50 + b"\nafter\nlast"
    got = [line for piece in random_splits(data, random.Random(1)) for line in framer.feed(piece)]
    assert got == [b"short", b"after"] and framer.overlong == 1 and framer.flush() == b"last"


def test_forwarding_framer_never_loses_a_byte():
    rng = random.Random(3)
    data = b"data: a\n\n" + b"data: " + b"z" * 300 + b"\n\ndata: [DONE]\n\n"
    for _ in range(50):
        framer = ForwardingFramer(max_line=64)
        pieces = [p for chunk in random_splits(data, rng) for p in framer.feed(chunk)]
        out = b"".join(p for p, _ in pieces) + (framer.flush() or b"")
        assert out == data
        parsed = [p for p, parse in pieces if parse]
        assert b"data: [DONE]\n" in parsed and all(len(p) <= 65 for p in parsed)
