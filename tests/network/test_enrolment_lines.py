"""Issue A: the server's enrolment lines, throttled for thousands of clients (server/enrolment_lines.py)."""

from __future__ import annotations

from server import enrolment_lines
from server.enrolment_lines import EnrolmentLines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_every_enrolment_of_a_small_run_is_said() -> None:
    lines: list[str] = []
    book = EnrolmentLines(3, lines.append, clock=Clock())
    for count, client in enumerate((6, 2, 9), start=1):
        book.enrolled(client, count)
    book.enrolled(2, 3, again=True)
    assert lines == [
        "ENROLLED 1 of 3 needed (client 6)",
        "ENROLLED 2 of 3 needed (client 2)",
        "ENROLLED 3 clients, 3 needed: enough to start rounds (client 9)",
        "ENROLLED 3 clients, 3 needed: enough to start rounds (client 2, enrolled again)",
    ]


def test_thousands_of_enrolments_in_a_second_give_a_few_dozen_lines() -> None:
    lines: list[str] = []
    clock = Clock()
    book = EnrolmentLines(5000, lines.append, clock=clock)
    for count in range(1, 5001):
        clock.now = count / 5000  # 5,000 enrolments within one second
        book.enrolled(count, count)
    # every one up to 50, then one per tenth of the 5,000 needed (and the last): 50 + 10
    assert len(lines) == enrolment_lines.EVERY_UP_TO + 10, lines[-12:]
    assert lines[-1] == "ENROLLED 5000 clients, 5000 needed: enough to start rounds (client 5000)"
    clock.now = 2.5
    book.enrolled(5001, 5001)  # a second later: said again
    assert len(lines) == enrolment_lines.EVERY_UP_TO + 11


def test_refusals_are_each_said_until_a_flood_then_counted() -> None:
    lines: list[str] = []
    clock = Clock()
    book = EnrolmentLines(3, lines.append, clock=clock)
    for client in range(100):
        book.refused(client, "the credential is not the identity authority's statement")
    assert len(lines) == enrolment_lines.REFUSED_PER_WINDOW
    assert lines[0] == "REFUSED enrolment of client 0: the credential is not the identity authority's statement"
    clock.now = enrolment_lines.WINDOW_S + 1
    book.refused(7, "no enrolment challenge answered")
    assert lines[-2:] == [
        "REFUSED 80 more enrolments in the last 10 s (reasons in the audit log)",
        "REFUSED enrolment of client 7: no enrolment challenge answered",
    ]


def test_the_wait_for_clients_is_said_every_ten_seconds() -> None:
    lines: list[str] = []
    clock = Clock()
    book = EnrolmentLines(20, lines.append, clock=clock)
    for second in range(25):  # the gate asks about once a second
        clock.now = float(second)
        book.waiting(7)
    assert lines == ["WAITING for 13 more clients (--min-clients 20; 7 enrolled and active)"] * 3
