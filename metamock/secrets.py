"""Secret values: a str whose repr and str never show the value."""

from __future__ import annotations


class Secret:
    """Holds a credential or token. `reveal()` is the only way to the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def key_hint(access_key_id: str) -> str:
    """What may be logged of an access key id: its last four characters."""
    return f"****{access_key_id[-4:]}" if access_key_id else "(none)"
