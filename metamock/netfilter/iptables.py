"""The iptables backend: one own `METAMOCK` chain in the nat table, jumped to from nat OUTPUT.

Works with both variants: `iptables` (whatever the Debian alternative points at),
`iptables-nft` or `iptables-legacy`, chosen by name. Every call waits for the xtables lock
(`-w`), and each family is written with one `iptables-restore --noflush` (atomic per table).
"""

from __future__ import annotations

from collections.abc import Sequence

from metamock.errors import NetfilterError
from metamock.netfilter import render
from metamock.netfilter._exec import Tools

VARIANTS = ("iptables", "iptables-nft", "iptables-legacy")
LOCK_WAIT = ["-w", "10"]
_NFT_FAMILY = {4: "ip", 6: "ip6"}


class IptablesBackend:
    """Rules in the `METAMOCK` chain of the IPv4 and IPv6 nat tables."""

    name = "iptables"

    def __init__(self, tools: Tools, variant: str = "iptables") -> None:
        if variant not in VARIANTS:
            raise NetfilterError(f"iptables variant {variant!r}: expected one of {', '.join(VARIANTS)}")
        self.tools = tools
        self.variant = variant

    def _cmd(self, family: int, suffix: str = "") -> str:
        base = self.variant if family == 4 else "ip6" + self.variant.removeprefix("ip")
        return base + suffix

    def usable(self) -> bool:
        return self.tools.ok([self._cmd(4), *LOCK_WAIT, "-t", "nat", "-S", "OUTPUT"])

    def on_nf_tables(self) -> bool:
        """True for the nf_tables flavour (`iptables v1.8.9 (nf_tables)`)."""
        done = self.tools.run([self._cmd(4), "--version"], check=False)
        return "nf_tables" in done.stdout

    def _has_chain(self, family: int) -> bool:
        return self.tools.ok([self._cmd(family), *LOCK_WAIT, "-t", "nat", "-S", render.CHAIN])

    def _has_jump(self, family: int) -> bool:
        return self.tools.ok([self._cmd(family), *LOCK_WAIT, "-t", "nat", "-C", "OUTPUT", "-j", render.CHAIN])

    def _nat_table_exists(self, family: int) -> bool:
        return self.tools.ok(["nft", "list", "table", _NFT_FAMILY[family], "nat"])

    def present(self) -> bool:
        return self._has_chain(4) or (self.tools.which(self._cmd(6)) is not None and self._has_chain(6))

    def apply(self, port: int, ipv6: bool, exclude_uids: Sequence[int]) -> list[str]:
        """Write the chain per family; on failure undo the families this call created.

        Returns the nf_tables `nat` tables (ip, ip6) that did not exist before, so that
        remove can delete them again once they are empty.
        """
        families = [4, 6] if ipv6 else [4]
        nf = self.on_nf_tables() and self.tools.which("nft") is not None
        created_tables: list[str] = []
        created_families: list[int] = []
        try:
            for family in families:
                if nf and not self._nat_table_exists(family):
                    created_tables.append(_NFT_FAMILY[family])
                existed = self._has_chain(family)
                jump = not self._has_jump(family)
                text = render.render_iptables(family, port, exclude_uids, with_jump=jump)
                self.tools.run([self._cmd(family, "-restore"), "--noflush", *LOCK_WAIT], stdin=text)
                if not existed:
                    created_families.append(family)
            if not ipv6 and self.tools.which(self._cmd(6)) is not None:
                self._remove_family(6)  # a previous apply had IPv6; once == twice == this call
        except BaseException:
            for family in reversed(created_families):
                self._remove_family(family, quiet=True)
            self._drop_empty_nat_tables(created_tables, quiet=True)
            raise
        return created_tables

    def _remove_family(self, family: int, *, quiet: bool = False) -> bool:
        """Unhook and delete the chain of one family in one restore; True when there was one."""
        try:
            if not self._has_chain(family):
                return False
            lines = ["*nat"]
            if self._has_jump(family):
                lines.append(f"-D OUTPUT -j {render.CHAIN}")
            lines += [f"-F {render.CHAIN}", f"-X {render.CHAIN}", "COMMIT", ""]
            self.tools.run([self._cmd(family, "-restore"), "--noflush", *LOCK_WAIT], stdin="\n".join(lines))
        except NetfilterError:
            if not quiet:
                raise
            return False
        return True

    def _drop_empty_nat_tables(self, tables: Sequence[str], *, quiet: bool = False) -> None:
        """Delete nf_tables nat tables we created, but only while they hold no rule at all."""
        for table in tables:
            family = 4 if table == "ip" else 6
            try:
                saved = self.tools.run([self._cmd(family, "-save"), "-t", "nat"], check=False).stdout
                if any(line.startswith("-A ") for line in saved.splitlines()):
                    continue  # someone else put rules there since; it is theirs now
                if self._nat_table_exists(family):
                    self.tools.run(["nft", "delete", "table", table, "nat"])
            except NetfilterError:
                if not quiet:
                    raise

    def remove(self, created_tables: Sequence[str] = ()) -> bool:
        """Remove the chains of both families (and the nat tables we created); True when any was there."""
        removed = self._remove_family(4)
        if self.tools.which(self._cmd(6)) is not None:
            removed = self._remove_family(6) or removed
        self._drop_empty_nat_tables(created_tables)
        return removed

    def listing(self) -> str:
        """The METAMOCK lines of `iptables-save -t nat` and `ip6tables-save -t nat`."""
        out = []
        for family in (4, 6):
            if self.tools.which(self._cmd(family, "-save")) is None:
                continue
            saved = self.tools.run([self._cmd(family, "-save"), "-t", "nat"], check=False).stdout
            out += [line for line in saved.splitlines() if render.CHAIN in line]
        return "\n".join(out) + ("\n" if out else "")
