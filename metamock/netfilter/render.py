"""The rule files in `iptables/` (shipped as `metamock/netfilter/rules/`) and their rendering.

The files are the one source of truth: the code only substitutes `@PORT@` / `@UID@` and picks
which optional files to add; it holds no rule text of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources

NFT_BASE = "metamock.nft"
NFT_IPV6 = "metamock-ipv6.nft"
NFT_EXCLUDE_UID = "exclude-uid.nft"
IPT_IPV4 = "metamock-ipv4.rules"
IPT_IPV6 = "metamock-ipv6.rules"
IPT_EXCLUDE_UID = "exclude-uid.rules"
CHAIN = "METAMOCK"
JUMP = f"-A OUTPUT -j {CHAIN}"  # the one line of the iptables files a re-apply must skip
_PARAM = re.compile(r"@[A-Z]+@")


def read(name: str) -> str:
    """The text of one rule file."""
    return (resources.files("metamock.netfilter") / "rules" / name).read_text(encoding="utf-8")


def _body(name: str) -> list[str]:
    """The lines of a rule file without its comments and blank lines."""
    lines = (line.rstrip() for line in read(name).splitlines())
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _fill(lines: Iterable[str], **values: int) -> list[str]:
    out = []
    for template in lines:
        line = template
        for key, value in values.items():
            line = line.replace(f"@{key}@", str(int(value)))
        if _PARAM.search(line):
            raise ValueError(f"unfilled parameter in rule line: {line!r}")
        out.append(line)
    return out


def render_nft(port: int, ipv6: bool, exclude_uids: Iterable[int]) -> str:
    """One `nft -f` transaction: the table, the IPv6 rule when wanted, one element per uid."""
    lines = _fill(_body(NFT_BASE), PORT=port)
    if ipv6:
        lines += _fill(_body(NFT_IPV6), PORT=port)
    for uid in sorted(set(exclude_uids)):
        lines += _fill(_body(NFT_EXCLUDE_UID), UID=uid)
    return "\n".join(lines) + "\n"


def render_iptables(family: int, port: int, exclude_uids: Iterable[int], *, with_jump: bool) -> str:
    """One `iptables-restore --noflush` input for `family` (4 or 6)."""
    lines = _fill(_body(IPT_IPV4 if family == 4 else IPT_IPV6), PORT=port)
    if not with_jump:
        lines = [line for line in lines if line != JUMP]
    # `-I` puts each exclusion first in the chain, so insert in reverse to list uids ascending.
    excludes: list[str] = []
    for uid in sorted(set(exclude_uids), reverse=True):
        excludes += _fill(_body(IPT_EXCLUDE_UID), UID=uid)
    commit = lines.index("COMMIT")
    lines[commit:commit] = excludes
    return "\n".join(lines) + "\n"
