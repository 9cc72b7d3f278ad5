"""The iptables backend: one own `METAMOCK` chain in the nat table, jumped to from nat OUTPUT.

Works with both variants: `iptables` (whatever the Debian alternative points at),
`iptables-nft` or `iptables-legacy`, chosen by name. Every call waits for the xtables lock
(`-w`), and each family is written with one `iptables-restore --noflush` (atomic per table).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from metamock.errors import NetfilterError
from metamock.netfilter import render
from metamock.netfilter._exec import Tools
from metamock.netfilter.compare import chain_problems
from metamock.netfilter.state import Marker, markers

VARIANTS = ("iptables", "iptables-nft", "iptables-legacy")
LOCK_WAIT = ["-w", "10"]
_NFT_FAMILY = {4: "ip", 6: "ip6"}
_BUILTIN = {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}


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

    def _save(self, family: int) -> str:
        """`iptables-save -t nat` of one family ('' when that tool is not installed)."""
        if self.tools.which(self._cmd(family, "-save")) is None:
            return ""
        return self.tools.run([self._cmd(family, "-save"), "-t", "nat"], check=False).stdout

    def _restore(self, family: int, text: str) -> None:
        self.tools.run([self._cmd(family, "-restore"), "--noflush", *LOCK_WAIT], stdin=text)

    def _nat_table_exists(self, family: int) -> bool:
        return self.tools.ok(["nft", "list", "table", _NFT_FAMILY[family], "nat"])

    def _families(self) -> list[int]:
        return [4, 6] if self.tools.which(self._cmd(6)) is not None else [4]

    def present(self) -> bool:
        return any(_chain_declared(self._save(family)) for family in self._families())

    def marker(self) -> Marker | None:
        """The tag of the first jump that carries one, or None."""
        found = markers("\n".join(self._save(family) for family in self._families()))
        return found[0] if found else None

    def apply(
        self, port: int, ipv6: bool, exclude_uids: Sequence[int], nonce: str, owned_before: Sequence[str] = ()
    ) -> list[str]:
        """Write the chain per family, converging: every jump there is now is deleted and one
        added, in the same restore. On failure undo the families this call created.

        Returns the nf_tables `nat` tables (ip, ip6) that metamock created (now or before): their
        jumps carry `nat=created`, so remove deletes them again once empty, even without a record.
        """
        families = [4, 6] if ipv6 else [4]
        nf = self.on_nf_tables() and self.tools.which("nft") is not None
        owned: list[str] = []
        created_tables: list[str] = []
        created_families: list[int] = []
        try:
            for family in families:
                name = _NFT_FAMILY[family]
                for attempt in (1, 2):
                    saved = self._save(family)
                    jumps = [line for line in saved.splitlines() if render.is_jump(line)]
                    tags = markers("\n".join(jumps))  # its jump may have been deleted: owned_before
                    ours = name in owned_before or any(m.nat_created for m in tags)
                    ours_output = f"{name}/OUTPUT" in owned_before or any(m.output_created for m in tags)
                    new_table = nf and not ours and not self._nat_table_exists(family)
                    new_output = (
                        nf and not (ours or new_table or ours_output) and not self._output_exists(family)
                    )
                    marker = Marker(nonce, port, ours or new_table, ours_output or new_output)
                    text = render.render_iptables(family, port, exclude_uids, tag=marker.tag(), delete=jumps)
                    try:
                        self._restore(family, text)
                        break
                    except NetfilterError:
                        if attempt == 2:  # another tool changed nat OUTPUT in between: once more
                            raise
                if new_table:
                    created_tables.append(name)
                if marker.nat_created:
                    owned.append(name)
                if marker.output_created:
                    owned.append(f"{name}/OUTPUT")
                if not _chain_declared(saved):
                    created_families.append(family)
            if not ipv6 and self.tools.which(self._cmd(6)) is not None:
                self._remove_family(6)  # a previous apply had IPv6; once == twice == this call
        except BaseException:
            for family in reversed(created_families):
                self._remove_family(family, quiet=True)
            self._drop_empty_nat_tables(created_tables, quiet=True)
            raise
        return owned

    def _remove_family(self, family: int, *, quiet: bool = False, owned: Sequence[str] = ()) -> bool:
        """Unhook (every jump) and delete the chain of one family in one restore; then drop the
        nat table when metamock created it and it is empty. True when anything was there."""
        try:
            saved = self._save(family)
            jumps = [line for line in saved.splitlines() if render.is_jump(line)]
            has_chain = _chain_declared(saved)
            if not jumps and not has_chain:
                return False
            lines = ["*nat", *("-D" + line.removeprefix("-A") for line in jumps)]
            if has_chain:
                lines += [f"-F {render.CHAIN}", f"-X {render.CHAIN}"]
            self._restore(family, "\n".join([*lines, "COMMIT", ""]))
            name, tags = _NFT_FAMILY[family], markers("\n".join(jumps))
            if any(m.nat_created for m in tags) or name in owned:
                self._drop_empty_nat_tables([name])
            elif any(m.output_created for m in tags) or f"{name}/OUTPUT" in owned:
                self._drop_empty_output(family)
        except NetfilterError:
            if not quiet:
                raise
            return False
        return True

    def _output_exists(self, family: int) -> bool:
        return self.tools.ok(["nft", "list", "chain", _NFT_FAMILY[family], "nat", "OUTPUT"])

    def _drop_empty_output(self, family: int) -> None:
        """Delete the nat OUTPUT chain apply added to someone else's nat table, while it is empty."""
        if any(line.startswith("-A OUTPUT ") for line in self._save(family).splitlines()):
            return
        if self._output_exists(family):
            self.tools.run(["nft", "delete", "chain", _NFT_FAMILY[family], "nat", "OUTPUT"])

    def _drop_empty_nat_tables(self, tables: Sequence[str], *, quiet: bool = False) -> None:
        """Delete nf_tables nat tables we created, but only while they hold no rule or chain."""
        for table in tables:
            family = 4 if table == "ip" else 6
            try:
                saved = self._save(family)
                lines = saved.splitlines()
                if any(line.startswith("-A ") for line in lines):
                    continue  # someone else put rules there since; it is theirs now
                if any(line.startswith(":") and line.split()[0][1:] not in _BUILTIN for line in lines):
                    continue  # or a chain of their own
                if self._nat_table_exists(family):
                    self.tools.run(["nft", "delete", "table", table, "nat"])
            except NetfilterError:
                if not quiet:
                    raise

    def remove(self, created_tables: Sequence[str] = ()) -> bool:
        """Remove the chains and all jumps of both families (and the nat tables we created)."""
        removed = False
        for family in self._families():
            removed = self._remove_family(family, owned=created_tables) or removed
        return removed

    def listing(self) -> str:
        """The METAMOCK lines of `iptables-save -t nat` and `ip6tables-save -t nat`."""
        out = []
        for family in self._families():
            out += [line for line in self._save(family).splitlines() if render.CHAIN in line]
        return "\n".join(out) + ("\n" if out else "")

    def live_ipv6(self, listing: str | None = None) -> bool:
        return 6 in self._families() and _chain_declared(self._save(6))

    def live_uids(self, listing: str | None = None) -> tuple[int, ...]:
        return tuple(sorted({int(u) for u in re.findall(r"--uid-owner (\d+)", self._save(4))}))

    def problems(
        self, port: int, ipv6: bool, exclude_uids: Sequence[int], listing: str | None = None
    ) -> list[str]:
        """What differs from a clean apply, per family: "jump from nat OUTPUT missing (ip6)"..."""
        problems = []
        for family in [4, 6] if ipv6 else [4]:
            label = _NFT_FAMILY[family]
            saved = self._save(family)
            if not _chain_declared(saved):
                problems.append(f"chain {render.CHAIN} of table nat is missing ({label})")
                continue
            lines = saved.splitlines()
            jumps = sum(1 for line in lines if render.is_jump(line))
            if jumps == 0:
                problems.append(f"jump from nat OUTPUT missing ({label})")
            elif jumps > 1:
                problems.append(f"jump from nat OUTPUT to {render.CHAIN} appears {jumps} times ({label})")
            live = [line for line in lines if line.startswith(f"-A {render.CHAIN} ")]
            where = f"chain {render.CHAIN} of table nat ({label})"
            expected = render.iptables_expected(family, port, exclude_uids)
            problems += chain_problems(where, live, expected, port)
        if not ipv6 and 6 in self._families() and _chain_declared(self._save(6)):
            problems.append(f"chain {render.CHAIN} of table nat present though IPv6 is off (ip6)")
        return problems


def _chain_declared(saved: str) -> bool:
    return any(line.startswith(f":{render.CHAIN} ") for line in saved.splitlines())
