"""The nft backend: one own `inet metamock` table, replaced in a single `nft -f` transaction."""

from __future__ import annotations

import re
from collections.abc import Sequence

from metamock.netfilter import render
from metamock.netfilter._exec import Tools
from metamock.netfilter.compare import chain_problems
from metamock.netfilter.state import Marker, markers

TABLE = ("inet", "metamock")
WHERE = "chain output of table inet metamock"
_COUNTER = re.compile(r" counter packets \d+ bytes \d+")
_ELEMENTS = re.compile(r"elements = \{([^}]*)\}")


class NftBackend:
    """Rules in `table inet metamock`; apply is atomic, so a failure leaves the old table."""

    name = "nft"

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    def usable(self) -> bool:
        """The binary exists and may talk to nf_tables here (needs CAP_NET_ADMIN, a kernel with nft)."""
        return self.tools.which("nft") is not None and self.tools.ok(["nft", "list", "tables"])

    def present(self) -> bool:
        return self.tools.ok(["nft", "list", "table", *TABLE])

    def marker(self) -> Marker | None:
        """The tag in the table's comment, or None (no table, or one made without a tag)."""
        found = markers(self.listing())
        return found[0] if found else None

    def apply(
        self, port: int, ipv6: bool, exclude_uids: Sequence[int], nonce: str, owned_before: Sequence[str] = ()
    ) -> list[str]:
        """Create or replace the table; nft commits all of it or nothing. Creates no other table."""
        tag = Marker(nonce, port).tag()
        self.tools.run(["nft", "-f", "-"], stdin=render.render_nft(port, ipv6, exclude_uids, tag))
        return []

    def remove(self, created_tables: Sequence[str] = ()) -> bool:
        """Delete the table; True when there was one."""
        if not self.present():
            return False
        self.tools.run(["nft", "delete", "table", *TABLE])
        return True

    def listing(self) -> str:
        """The table as `nft list table inet metamock` prints it, or '' when absent."""
        done = self.tools.run(["nft", "list", "table", *TABLE], check=False)
        return done.stdout if done.returncode == 0 else ""

    def live_ipv6(self, listing: str) -> bool:
        return "ip6 daddr" in listing

    def live_uids(self, listing: str) -> tuple[int, ...]:
        found = _ELEMENTS.search(listing)
        return tuple(sorted(int(u) for u in re.findall(r"\d+", found[1]))) if found else ()

    def problems(
        self, port: int, ipv6: bool, exclude_uids: Sequence[int], listing: str | None = None
    ) -> list[str]:
        """What differs from a clean apply of (port, ipv6, exclude_uids); [] when nothing."""
        text = self.listing() if listing is None else listing
        if not text:
            return ["table inet metamock is missing"]
        lines = [_COUNTER.sub("", line.strip()) for line in text.splitlines()]
        if "chain output {" not in lines:
            return [f"{WHERE} is missing"]
        start = lines.index("chain output {") + 1
        body = lines[start : lines.index("}", start)]
        hook, expected = render.nft_expected(port, ipv6)
        problems = []
        if not body or body[0] != hook:
            problems.append(f"{WHERE} is not hooked as `{hook}`")
        problems += chain_problems(WHERE, [line for line in body if line and line != hook], expected, port)
        if "set exclude_uids {" not in lines:
            problems.append("set exclude_uids of table inet metamock is missing")
        elif self.live_uids(text) != tuple(sorted(set(exclude_uids))):
            live = ", ".join(map(str, self.live_uids(text))) or "none"
            want = ", ".join(map(str, sorted(set(exclude_uids)))) or "none"
            problems.append(f"set exclude_uids of table inet metamock holds uids {live}, recorded {want}")
        return problems
