"""``ollama-sidecar`` with uvloop as the event loop, for the benchmark's ``--proxy-loop uvloop``.

The proxy itself does not opt in to uvloop; this wrapper lets the lead see what it would
buy without changing proxy code. aiohttp's ``run_app`` creates its loop through the
event-loop policy, so installing uvloop's policy first is enough.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from proxy.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main())
