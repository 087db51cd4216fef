"""The MLflow calls of one run, sent in order by a thread of their own: a tracking server that does not answer
delays the calls, never the training that makes them.

A call that fails (MLflow's client has already retried it for about two minutes) is tried again every `RETRY_S`
until it goes through, so whatever is logged while the server is down arrives once it is back, in order. `close`
waits a bounded time for the rest; what is still unsent then is returned, described, for the run to say so.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

RETRY_S = 5.0


@dataclass(frozen=True)
class Call:
    what: dict[str, Any]  # what the call logs, as data (kept in the run folder if it is never sent)
    send: Callable[[], Any]


class Outbox:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: deque[Call] = deque()
        self.lock = threading.Condition()
        self.closing = False
        self.down_since: float | None = None
        self.thread = threading.Thread(target=self._send_all, name=f"mlflow-outbox-{name}", daemon=True)
        self.thread.start()

    def put(self, what: dict[str, Any], send: Callable[[], Any]) -> None:
        with self.lock:
            self.calls.append(Call(what, send))
            self.lock.notify()

    def close(self, wait_s: float) -> list[dict[str, Any]]:
        """Wait up to `wait_s` for every call to go through; returns what did not (in order, the call in flight
        first: it may still arrive)."""
        deadline = time.monotonic() + wait_s
        with self.lock:
            self.closing = True
            self.lock.notify()
            while self.calls and time.monotonic() < deadline:
                self.lock.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            return [call.what for call in self.calls]

    def _send_all(self) -> None:
        while True:
            with self.lock:
                while not self.calls:
                    if self.closing:
                        return
                    self.lock.wait()
                call = self.calls[0]
            try:
                call.send()
            except Exception as err:  # the server unreachable, or refusing: keep the call, try again
                self._down(err)
                time.sleep(RETRY_S)
                continue
            self._up()
            with self.lock:
                self.calls.popleft()
                self.lock.notify_all()

    def _down(self, err: Exception) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)[:300]
            print(f"tracking: run {self.name} cannot log ({first}); {len(self.calls)} calls kept, retried every "
                  f"{RETRY_S:g} s; training goes on", flush=True)

    def _up(self) -> None:
        if self.down_since is not None:
            print(f"tracking: run {self.name} logs again after {time.monotonic() - self.down_since:.0f} s; "
                  f"{len(self.calls)} kept calls being sent", flush=True)
            self.down_since = None
