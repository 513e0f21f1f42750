"""A fast fake Ollama for the proxy benchmark, run in its own process.

It must cost as little CPU as possible so the numbers describe the proxy, not the fake:
non-stream replies are pre-encoded bytes and the request body is not JSON-decoded.
Streams are paced like a real token stream (one chunk every ``--interval-ms``, starting
at a random phase so 500 streams do not all write in the same millisecond) and each
chunk carries ``x_sent_ns``, the CLOCK_MONOTONIC time it was written. CLOCK_MONOTONIC is
system-wide on Linux, so the client process can compute each chunk's delivery delay.

    python bench/fake_upstream.py --port 18000 [--interval-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from aiohttp import web

MODEL = "llama3.2"
CREATED = "2026-05-09T07:35:25.123456789Z"
JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"

# Ollama's non-stream /api/chat reply: the final object, all timing fields present.
CHAT_REPLY = json.dumps({
    "model": MODEL, "created_at": CREATED,
    "message": {"role": "assistant", "content": "The sky is blue because of Rayleigh scattering."},
    "done_reason": "stop", "done": True, "total_duration": 498_000_000, "load_duration": 2_100_000,
    "prompt_eval_count": 26, "prompt_eval_duration": 130_000_000, "eval_count": 12,
    "eval_duration": 360_000_000,
}, separators=(",", ":")).encode()

# Token chunks in Ollama's compact encoding; the send time is appended per chunk.
TOKEN_HEAD = (f'{{"model":"{MODEL}","created_at":"{CREATED}",'
              '"message":{"role":"assistant","content":" token"},"done":false,"x_sent_ns":').encode()
FINAL_HEAD = (f'{{"model":"{MODEL}","created_at":"{CREATED}",'
              '"message":{"role":"assistant","content":""},"done_reason":"stop","done":true,'
              '"total_duration":2498000000,"load_duration":2100000,"prompt_eval_count":26,'
              '"prompt_eval_duration":130000000,"eval_count":%d,"eval_duration":2000000000,'
              '"x_sent_ns":').encode()


def build_app(interval: float) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if b'"stream":false' in raw:
            return web.Response(body=CHAT_REPLY, headers={"Content-Type": JSON_TYPE})
        body = json.loads(raw)
        chunks = int(body.get("options", {}).get("num_predict", 200))
        out = web.StreamResponse(headers={"Content-Type": NDJSON_TYPE})
        await out.prepare(request)
        loop = asyncio.get_running_loop()
        # Absolute schedule: drift of one sleep does not accumulate over the stream.
        due = loop.time() + random.random() * interval
        for _ in range(chunks):
            await asyncio.sleep(due - loop.time())
            await out.write(b"%s%d}\n" % (TOKEN_HEAD, time.monotonic_ns()))
            due += interval
        await asyncio.sleep(due - loop.time())
        await out.write(b"%s%d}\n" % (FINAL_HEAD % chunks, time.monotonic_ns()))
        await out.write_eof()
        return out

    async def version(request: web.Request) -> web.Response:
        return web.Response(body=b'{"version":"0.12.0"}', headers={"Content-Type": JSON_TYPE})

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/version", version)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args()
    web.run_app(build_app(args.interval_ms / 1000), host="127.0.0.1", port=args.port,
                access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
