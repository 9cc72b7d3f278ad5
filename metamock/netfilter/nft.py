"""The nft backend: one own `inet metamock` table, replaced in a single `nft -f` transaction."""

from __future__ import annotations

from collections.abc import Sequence

from metamock.netfilter import render
from metamock.netfilter._exec import Tools

TABLE = ("inet", "metamock")


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

    def apply(self, port: int, ipv6: bool, exclude_uids: Sequence[int]) -> list[str]:
        """Create or replace the table; nft commits all of it or nothing. Creates no other table."""
        self.tools.run(["nft", "-f", "-"], stdin=render.render_nft(port, ipv6, exclude_uids))
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
