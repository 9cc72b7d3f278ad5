"""The rule files in `iptables/` (shipped as `metamock/netfilter/rules/`) and their rendering.

The files are the one source of truth: the code only substitutes `@PORT@` / `@UID@` / `@TAG@`
and picks which optional files to add; it holds no rule text of its own. What `status` compares
the live rules with (`nft_expected`, `iptables_expected`) is derived from the same rendering.
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
_PARAM = re.compile(r"@[A-Z]+@")
TAG_TEXT = re.compile(r"[a-z0-9=. ]{1,200}")  # fits an nft comment and an xt_comment, no quoting
NFT_ADD_RULE = "add rule inet metamock output "


def read(name: str) -> str:
    """The text of one rule file."""
    return (resources.files("metamock.netfilter") / "rules" / name).read_text(encoding="utf-8")


def _body(name: str) -> list[str]:
    """The lines of a rule file without its comments and blank lines."""
    lines = (line.rstrip() for line in read(name).splitlines())
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _fill(lines: Iterable[str], **values: int | str) -> list[str]:
    out = []
    for template in lines:
        line = template
        for key, value in values.items():
            if isinstance(value, str) and not TAG_TEXT.fullmatch(value):
                raise ValueError(f"parameter {key}: {value!r} is not [a-z0-9=. ] text")
            line = line.replace(f"@{key}@", value if isinstance(value, str) else str(int(value)))
        if _PARAM.search(line):
            raise ValueError(f"unfilled parameter in rule line: {line!r}")
        out.append(line)
    return out


def render_nft(port: int, ipv6: bool, exclude_uids: Iterable[int], tag: str = "manual") -> str:
    """One `nft -f` transaction: the table, the IPv6 rule when wanted, one element per uid."""
    lines = _fill(_body(NFT_BASE), PORT=port, TAG=tag)
    if ipv6:
        lines += _fill(_body(NFT_IPV6), PORT=port)
    for uid in sorted(set(exclude_uids)):
        lines += _fill(_body(NFT_EXCLUDE_UID), UID=uid)
    return "\n".join(lines) + "\n"


def is_jump(line: str) -> bool:
    """A line of `iptables-save` that jumps from nat OUTPUT to metamock's chain (any comment)."""
    return line.startswith("-A OUTPUT ") and line.split()[-2:] == ["-j", CHAIN]


def render_iptables(
    family: int, port: int, exclude_uids: Iterable[int], *, tag: str = "manual", delete: Iterable[str] = ()
) -> str:
    """One `iptables-restore --noflush` input for `family` (4 or 6).

    `delete`: the jump lines `iptables-save` shows now; each is deleted in the same transaction
    before the file's one jump is added, so duplicates left by anyone converge to exactly one.
    """
    lines = _fill(_body(IPT_IPV4 if family == 4 else IPT_IPV6), PORT=port, TAG=tag)
    jump = next(i for i, line in enumerate(lines) if is_jump(line))
    lines[jump:jump] = ["-D" + line.removeprefix("-A") for line in delete if is_jump(line)]
    # `-I` puts each exclusion first in the chain, so insert in reverse to list uids ascending.
    excludes: list[str] = []
    for uid in sorted(set(exclude_uids), reverse=True):
        excludes += _fill(_body(IPT_EXCLUDE_UID), UID=uid)
    commit = lines.index("COMMIT")
    lines[commit:commit] = excludes
    return "\n".join(lines) + "\n"


def iptables_expected(family: int, port: int, exclude_uids: Iterable[int]) -> list[str]:
    """The `-A METAMOCK` lines `iptables-save -t nat` shows after a clean apply, in order."""
    chain: list[str] = []
    for line in render_iptables(family, port, exclude_uids).splitlines():
        if line.startswith(f"-A {CHAIN} "):
            chain.append(line)
        elif line.startswith(f"-I {CHAIN} "):
            chain.insert(0, "-A" + line.removeprefix("-I"))
    return chain


def nft_expected(port: int, ipv6: bool) -> tuple[str, list[str]]:
    """(hook line, rule lines) of chain output as `nft list table inet metamock` shows them."""
    hook, rules, inside = "", [], False
    for raw in render_nft(port, ipv6, ()).splitlines():
        line = raw.strip()
        if line.startswith("chain output"):
            inside = True
        elif inside and line == "}":
            inside = False
        elif inside and line.startswith("type "):
            hook = line
        elif inside:
            rules.append(line)
        elif line.startswith(NFT_ADD_RULE):
            rules.append(line.removeprefix(NFT_ADD_RULE))
    return hook, rules
