"""Framing survives any split of the byte stream."""

from __future__ import annotations

import random

from proxy.dataplane.framing import ForwardingFramer, LineFramer


def random_splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 40))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def feed_all(framer: LineFramer, pieces: list[bytes]) -> tuple[bytes, list[bytes]]:
    forwarded, lines = [], []
    for piece in pieces:
        out, got = framer.feed(piece)
        forwarded.append(out)
        lines.extend(got)
    return b"".join(forwarded), lines


def test_line_framer_yields_every_line_whatever_the_split():
    rng = random.Random(7)
    lines = [f'{{"n":{i},"pad":"{"x" * rng.randint(0, 50)}"}}'.encode() for i in range(200)]
    data = b"\n".join(lines) + b"\n"
    for _ in range(50):
        framer = LineFramer(max_line=1 << 20)
        forwarded, got = feed_all(framer, random_splits(data, rng))
        assert got == lines and forwarded == data and framer.flush() is None


def test_line_framer_forwards_whole_lines_only_so_a_cut_never_leaves_half_a_line():
    data = b'{"a":1}\n{"b":2}\n{"c":3}\n'
    rng = random.Random(5)
    for _ in range(50):
        framer = LineFramer(max_line=1 << 20)
        sent = b""
        for piece in random_splits(data, rng):
            sent += framer.feed(piece)[0]
            assert sent.endswith(b"\n") or not sent  # the client only ever holds whole lines
        assert sent == data


def test_line_framer_relays_overlong_lines_as_they_arrive_and_keeps_their_ends():
    framer = LineFramer(max_line=10)
    long_line = b'{"done":true,' + b"y" * 50_000 + b'"end":1}'
    data = b"short\n" + long_line + b"\nafter\nlast"
    forwarded, got = feed_all(framer, random_splits(data, random.Random(1)))
    assert got == [b"short", b"after"] and framer.overlong == 1
    assert forwarded == data[: -len(b"last")] and framer.flush() == b"last"  # the unterminated tail waits
    (kept,) = framer.long_lines
    assert kept.size == len(long_line) and long_line.startswith(kept.head) and long_line.endswith(kept.tail)
    assert len(kept.head) + len(kept.tail) <= 2 * 4096  # bounded, whatever the line's length


def test_a_cut_inside_an_overlong_line_is_known_so_the_error_can_start_a_new_line():
    framer = LineFramer(max_line=10)
    out, _ = framer.feed(b'{"x":"' + b"z" * 30)
    assert out.startswith(b'{"x"') and framer.mid_line


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


def test_the_counts_of_a_final_object_with_a_long_context_are_read_from_its_ends():
    import json

    from proxy.dataplane.framing import LongLine
    from proxy.dataplane.observe import read_long_object
    final = {"model": "m", "created_at": "2025-07-07T20:22:19Z", "response": "", "done": True,
             "done_reason": "stop", "context": list(range(200_000)), "total_duration": 5,
             "prompt_eval_count": 169, "eval_count": 15, "eval_duration": 7}
    line = LongLine(json.dumps(final, separators=(",", ":")).encode())
    got = read_long_object(line)
    assert got is not None and got["done"] is True and got["done_reason"] == "stop"
    assert (got["prompt_eval_count"], got["eval_count"], got["eval_duration"]) == (169, 15, 7)
    assert "context" not in got
    assert read_long_object(LongLine(b"<html>" + b"x" * 20_000 + b"</html>")) is None
