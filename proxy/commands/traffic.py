"""Steady chat traffic with sticky sessions, and a record of what every client saw.

The demo shows it live; the end-to-end test asserts on it (no stable request failed,
every stream in flight at the flip completed). Each request is a native streaming chat
on the route alias, read line by line as a real client would.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    ended: float
    session: str
    arm: str  # from X-Sidecar-Arm; "" when the proxy did not answer
    model: str
    status: int  # 0: no HTTP answer
    completed: bool  # a 200 stream that ended with its final done object
    error: str | None
    upstream: str = ""  # from X-Sidecar-Upstream: the server that answered


class TrafficDriver:
    def __init__(self, proxy_url: str, route: str, workers: int = 6, sessions: int = 60,
                 pause: float = 0.05) -> None:
        self.url = f"{proxy_url}/api/chat"
        self.route = route
        self.workers = workers
        self.sessions = sessions
        self.pause = pause
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "TrafficDriver":
        for w in range(self.workers):
            t = threading.Thread(target=self._work, args=(w,), daemon=True, name=f"traffic-{w}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _work(self, worker: int) -> None:
        http = requests.Session()
        i = worker
        while not self._stop.is_set():
            session = f"user-{i % self.sessions}"
            i += self.workers
            outcome = self.one(http, session)
            with self._lock:
                self.outcomes.append(outcome)
            self._stop.wait(self.pause)

    def one(self, http: requests.Session, session: str) -> Outcome:
        started = time.monotonic()
        body = {"model": self.route, "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
        arm, model, status, upstream = "", "", 0, ""
        try:
            with http.post(self.url, json=body, headers={"X-Session-ID": session}, stream=True, timeout=30) as r:
                arm = r.headers.get("X-Sidecar-Arm", "")
                model = r.headers.get("X-Sidecar-Model", "")
                upstream = r.headers.get("X-Sidecar-Upstream", "")
                status = r.status_code
                completed, error = False, None
                if r.status_code == 200:
                    for line in r.iter_lines():
                        obj = json.loads(line)
                        if "error" in obj:
                            error = str(obj["error"])
                        elif obj.get("done"):
                            completed = True
                else:
                    error = r.text[:200]
                return Outcome(started, time.monotonic(), session, arm, model, r.status_code, completed, error,
                               upstream)
        except (requests.RequestException, ValueError) as exc:
            # A stream that broke after its headers still counts against the arm it was on.
            return Outcome(started, time.monotonic(), session, arm, model, status, False, type(exc).__name__,
                           upstream)

    def snapshot(self, since: float = 0.0) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.ended >= since]
