"""The enrolment challenge book: single-use, short-lived nonces, bounded per peer and overall."""

from __future__ import annotations

import time

import pytest

from server.enrol_challenges import ChallengeBook, TooManyChallenges, peer_host


def test_a_nonce_is_redeemed_once_by_the_client_it_was_issued_to() -> None:
    book = ChallengeBook()
    nonce = book.issue("ipv4:127.0.0.1:5000", 7)
    assert len(nonce) == 32 and nonce != book.issue("ipv4:127.0.0.1:5000", 7)
    assert book.redeem(nonce, 7)
    assert not book.redeem(nonce, 7)  # single use
    other = book.issue("ipv4:127.0.0.1:5000", 7)
    assert not book.redeem(other, 8) and not book.redeem(other, 7)  # another id used it up
    assert not book.redeem(bytes(32), 7)


def test_a_nonce_expires() -> None:
    book = ChallengeBook(lifetime_s=0.05)
    nonce = book.issue("ipv4:10.0.0.1:1", 1)
    time.sleep(0.1)
    assert not book.redeem(nonce, 1) and book.outstanding() == 0


def test_outstanding_nonces_are_bounded_per_peer_and_overall() -> None:
    book = ChallengeBook(per_peer=3, total=5)
    first = [book.issue(f"ipv4:10.0.0.1:{port}", 1) for port in range(3)]  # one host, any port
    with pytest.raises(TooManyChallenges, match="3 enrolment challenges of ipv4:10.0.0.1"):
        book.issue("ipv4:10.0.0.1:9", 1)
    assert book.redeem(first[0], 1)
    book.issue("ipv4:10.0.0.1:9", 1)  # answered one: room for one more
    others = [book.issue(f"ipv6:[::{i}]:1", 2) for i in range(3)]  # the book is full: the oldest go first
    assert book.outstanding() == 5
    assert not book.redeem(first[1], 1) and book.redeem(others[-1], 2)
    assert peer_host("ipv6:[::1]:443") == "ipv6:[::1]" and peer_host("unix:/tmp/x") == "unix:/tmp/x"
