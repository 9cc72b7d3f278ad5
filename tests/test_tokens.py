"""Token sign/verify/expiry with an injected clock."""

from __future__ import annotations

import pytest

from metamock.clock import ManualClock
from metamock.imds.tokens import TOKEN_LENGTH, TokenSigner


def test_issue_and_verify() -> None:
    signer = TokenSigner(ManualClock())
    token = signer.issue(60)
    assert len(token) == TOKEN_LENGTH
    assert signer.valid(token)


def test_expires_exactly_after_ttl() -> None:
    clock = ManualClock()
    signer = TokenSigner(clock)
    token = signer.issue(10)
    clock.advance(9.999)
    assert signer.valid(token)
    clock.advance(0.001)
    assert not signer.valid(token)


def test_other_key_or_tampered_token_is_invalid() -> None:
    clock = ManualClock()
    a, b = TokenSigner(clock, key=b"a" * 32), TokenSigner(clock, key=b"b" * 32)
    token = a.issue(60)
    assert not b.valid(token)
    for i in range(len(token)):
        flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        assert not a.valid(flipped)


@pytest.mark.parametrize("bad", ["", "x", "!" * TOKEN_LENGTH, "A" * 10_000, "é" * TOKEN_LENGTH])
def test_garbage_is_invalid(bad: str) -> None:
    assert not TokenSigner(ManualClock()).valid(bad)


@pytest.mark.parametrize("ttl", [0, 21601, -5])
def test_issue_refuses_out_of_range_ttl(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        TokenSigner(ManualClock()).issue(ttl)


def test_repr_hides_key() -> None:
    signer = TokenSigner(ManualClock(), key=b"k" * 32)
    assert "kkkk" not in repr(signer)
