"""Steady chat traffic with sticky sessions, and a record of what every client saw.

The demo shows it live; the end-to-end test asserts on it (no stable request failed,
every stream in flight at the flip completed). Each request is a native streaming chat
on the route alias, read line by line as a real client would.

The simulated users hold conversations of a few turns. After each answer a user judges
it by the answering model's ``answer_quality`` (the simulator's profile, read from its
control API when ``simulator`` is given): an accepted answer leads to the next turn, and
now and then a thumbs-up; a rejected one is regenerated (the same messages again) or rated
down through ``/api/feedback``. A worse canary that never errors shows in the quality
signals, as it would with real users.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

TURNS = 4  # a conversation's user turns before the user starts a new one
QUESTIONS = ("Why is the sky blue?", "And at sunset?", "What about on Mars?", "Summarise that in a line.")


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


@dataclass
class Conversation:
    messages: list[dict[str, str]] = field(default_factory=list)
    pending: list[dict[str, str]] | None = None  # the messages to send again (a regeneration)


class TrafficDriver:
    def __init__(self, proxy_url: str, route: str, workers: int = 6, sessions: int = 60,
                 pause: float = 0.05, simulator: str | None = None, seed: int = 1,
                 keys: tuple[str, ...] = ()) -> None:
        self.url = f"{proxy_url}/api/chat"
        self.feedback_url = f"{proxy_url}/api/feedback"
        self.route = route
        self.workers = workers
        self.sessions = sessions
        self.pause = pause
        # API keys of the stack's tenants: each worker (and so each of its users) sends one
        self.keys = keys
        self.simulators = [simulator] if isinstance(simulator, str) else list(simulator or [])
        self.rng = random.Random(seed)
        self.conversations: dict[str, Conversation] = {}
        self._quality: dict[str, float] = {}
        self._quality_read = 0.0
        # per arm: [answers judged, regenerated, rated down]
        self.judged: dict[str, list[int]] = {"stable": [0, 0, 0], "canary": [0, 0, 0]}
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
        if self.keys:
            http.headers["Authorization"] = f"Bearer {self.keys[worker % len(self.keys)]}"
        i = worker
        n = 0
        while not self._stop.is_set():
            # One request in ten is a visitor who asks one question and leaves: sessions end
            # (and expire) all the time, as on a real chat product.
            session = f"visitor-{worker}-{n}" if n % 10 == 0 else f"user-{i % self.sessions}"
            n += 1
            i += self.workers
            outcome = self.one(http, session)
            with self._lock:
                self.outcomes.append(outcome)
            self._stop.wait(self.pause)

    def quality(self, model: str) -> float:
        """The answering model's answer_quality, from the simulators' profiles (every 2 s)."""
        now = time.monotonic()
        if self.simulators and now - self._quality_read > 2.0:
            self._quality_read = now
            for url in self.simulators:
                try:
                    profiles = requests.get(f"{url}/_simulator/models", timeout=2).json()["models"]
                except (requests.RequestException, ValueError, KeyError):
                    continue
                self._quality.update({name: float(p.get("answer_quality", 1.0)) for name, p in profiles.items()})
        return self._quality.get(model, 1.0)

    def _messages(self, session: str) -> tuple[Conversation, list[dict[str, str]]]:
        with self._lock:
            conv = self.conversations.setdefault(session, Conversation())
            if conv.pending is not None:
                return conv, conv.pending
            turn = sum(1 for m in conv.messages if m["role"] == "user")
            if turn >= TURNS:
                conv.messages = []
                turn = 0
            return conv, conv.messages + [{"role": "user", "content": QUESTIONS[turn]}]

    def _judge(self, http: requests.Session, conv: Conversation, sent: list[dict[str, str]], answer: str,
               model: str, arm: str, request_id: str | None) -> None:
        """A user reads the answer: accepts it, regenerates it, or rates it."""
        accepted = self.rng.random() < self.quality(model) * 0.97  # even good models get the odd retry
        rating: str | None = None
        with self._lock:
            if accepted:
                conv.messages, conv.pending = sent + [{"role": "assistant", "content": answer}], None
                rating = "positive" if self.rng.random() < 0.1 else None
            elif self.rng.random() < 0.6:
                conv.pending = sent  # the same turn again
            else:
                conv.messages, conv.pending = sent + [{"role": "assistant", "content": answer}], None
                rating = "negative"
            tally = self.judged.setdefault(arm, [0, 0, 0])
            tally[0] += 1
            tally[1] += conv.pending is not None
            tally[2] += rating == "negative"
        if rating and request_id:
            try:
                http.post(self.feedback_url, json={"request_id": request_id, "score": 1 if rating == "positive" else -1},
                          timeout=5)
            except requests.RequestException:
                pass

    def one(self, http: requests.Session, session: str) -> Outcome:
        started = time.monotonic()
        conv, sent = self._messages(session)
        body: dict[str, Any] = {"model": self.route, "messages": sent}
        arm, model, status, upstream = "", "", 0, ""
        try:
            with http.post(self.url, json=body, headers={"X-Session-ID": session}, stream=True, timeout=30) as r:
                arm = r.headers.get("X-Sidecar-Arm", "")
                model = r.headers.get("X-Sidecar-Model", "")
                upstream = r.headers.get("X-Sidecar-Upstream", "")
                status = r.status_code
                completed, error = False, None
                answer = []
                if r.status_code == 200:
                    for line in r.iter_lines():
                        obj = json.loads(line)
                        if "error" in obj:
                            error = str(obj["error"])
                        elif obj.get("done"):
                            completed = True
                        else:
                            answer.append(obj.get("message", {}).get("content", ""))
                else:
                    error = r.text[:200]
                if completed:
                    self._judge(http, conv, sent, "".join(answer), model, arm, r.headers.get("X-Request-ID"))
                return Outcome(started, time.monotonic(), session, arm, model, r.status_code, completed, error,
                               upstream)
        except (requests.RequestException, ValueError) as exc:
            # A stream that broke after its headers still counts against the arm it was on.
            return Outcome(started, time.monotonic(), session, arm, model, status, False, type(exc).__name__,
                           upstream)

    def tally(self) -> dict[str, list[int]]:
        """Per arm: answers judged, regenerated, rated down, so far."""
        with self._lock:
            return {arm: list(v) for arm, v in self.judged.items()}

    def snapshot(self, since: float = 0.0) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.ended >= since]
