"""The operator's enrolment lines on the server's stdout: `ENROLLED 7 of 20 needed (client 6)` as clients
enrol, `REFUSED enrolment of client 9: <reason>` (the reason the audit log records), and `WAITING for 13 more
clients (--min-clients 20)` while rounds wait for clients.

Throttled for thousands of clients: every enrolment up to `EVERY_UP_TO`, then at most one line per
`MIN_INTERVAL_S` unless the count crossed another tenth of what is needed (reaching it is always said);
at most `REFUSED_PER_WINDOW` refusal lines per `WINDOW_S` (the rest counted in one line); a waiting line at
most every `WAITING_EVERY_S`. Transport-free; the clock is injectable for tests.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

EVERY_UP_TO = 50
MIN_INTERVAL_S = 1.0
REFUSED_PER_WINDOW = 20
WINDOW_S = 10.0
WAITING_EVERY_S = 10.0


class EnrolmentLines:
    def __init__(
        self, needed: int, emit: Callable[[str], None], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.needed = needed  # --min-clients
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._last_enrolled: float | None = None
        self._last_tenth = 0  # the tenth of `needed` the last printed count was in
        self._window_start = clock()
        self._refused_in_window = 0
        self._suppressed = 0
        self._last_waiting: float | None = None

    def enrolled(self, client_id: int, count: int, *, again: bool = False) -> None:
        """Client `client_id` enrolled; `count` clients now hold a session; `again`: it had one already."""
        now = self._clock()
        tenth = count * 10 // max(self.needed, 1)
        with self._lock:
            due = (
                count <= EVERY_UP_TO
                or count == self.needed
                or tenth > self._last_tenth
                or self._last_enrolled is None
                or now - self._last_enrolled >= MIN_INTERVAL_S
            )
            if not due:
                return
            self._last_enrolled, self._last_tenth = now, max(self._last_tenth, tenth)
        who = f"client {client_id}, enrolled again" if again else f"client {client_id}"
        if count < self.needed:
            self._emit(f"ENROLLED {count} of {self.needed} needed ({who})")
        else:
            self._emit(f"ENROLLED {count} clients, {self.needed} needed: enough to start rounds ({who})")

    def refused(self, client_id: int | None, reason: str) -> None:
        """One enrolment refused, with the reason the audit log records."""
        now = self._clock()
        with self._lock:
            if now - self._window_start >= WINDOW_S:
                suppressed, self._suppressed = self._suppressed, 0
                self._window_start, self._refused_in_window = now, 0
            else:
                suppressed = 0
            self._refused_in_window += 1
            shown = self._refused_in_window <= REFUSED_PER_WINDOW
            if not shown:
                self._suppressed += 1
        if suppressed:
            self._emit(f"REFUSED {suppressed} more enrolments in the last {WINDOW_S:.0f} s (reasons in the audit log)")
        if shown:
            self._emit(f"REFUSED enrolment of client {'?' if client_id is None else client_id}: {reason}")

    def waiting(self, active: int) -> None:
        """The rounds wait: `active` clients hold a live session, `needed` are needed (said every ~10 s)."""
        now = self._clock()
        with self._lock:
            if self._last_waiting is not None and now - self._last_waiting < WAITING_EVERY_S:
                return
            self._last_waiting = now
        self._emit(
            f"WAITING for {self.needed - active} more clients (--min-clients {self.needed}; {active} enrolled and active)"
        )
