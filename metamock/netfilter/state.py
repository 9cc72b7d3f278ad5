"""What apply put in place: a small JSON record in the run directory, and a tag in the kernel.

The record is only a cache. The kernel holds the truth: metamock's nft table carries the comment
`metamock nonce=<hex> port=<p>`, and each iptables jump to METAMOCK the same text (plus
`nat=created` when apply created that nf_tables `nat` table). A record counts only when its nonce
is what the kernel shows: the kernel reuses a destroyed namespace's inode, so a file keyed by it
can belong to a namespace that no longer exists (then it is ignored and replaced).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metamock.control_socket import netns_key, run_dir
from metamock.errors import NetfilterError
from metamock.netfilter.routes import Route

_TAG = re.compile(r"metamock nonce=([0-9a-f]+) port=(\d+)( nat=created)?( output=created)?")


def state_path(state_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """One file per network namespace (`<dev>-<inode>` of its nsfs file, as the control socket), in
    `state_dir` or else where `environ` says (control_socket.run_dir: /run/metamock by default)."""
    directory = run_dir(environ) if state_dir is None else state_dir
    return directory / f"netfilter-{netns_key() or 'default'}.json"


def new_nonce() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Marker:
    """What the kernel's tag on metamock's table or jump says."""

    nonce: str
    port: int
    nat_created: bool = False  # apply created this nf_tables `nat` table
    output_created: bool = False  # or, in a `nat` table that existed (Docker's), its OUTPUT chain

    def tag(self) -> str:
        """The `@TAG@` text of the rule files (`metamock ` comes from the files)."""
        nat = " nat=created" if self.nat_created else ""
        return f"nonce={self.nonce} port={self.port}{nat}" + (
            " output=created" if self.output_created else ""
        )


def markers(text: str) -> list[Marker]:
    """Every metamock tag in a rule listing (nft list / iptables-save), in order."""
    return [Marker(m[1], int(m[2]), bool(m[3]), bool(m[4])) for m in _TAG.finditer(text)]


@dataclass(frozen=True)
class Applied:
    """The record of one apply: enough for status and for an exact remove."""

    backend: str
    port: int
    ipv6: bool
    exclude_uids: tuple[int, ...] = ()
    routes: tuple[Route, ...] = ()  # added by metamock (not those the host had)
    iptables: str | None = None  # variant, for the iptables backend
    nat_tables: tuple[str, ...] = ()  # created by iptables-nft: "ip" (a nat table), "ip/OUTPUT" (a chain)
    nonce: str = ""  # also in the kernel's tag: a record with another nonce is stale

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "port": self.port,
            "ipv6": self.ipv6,
            "exclude_uids": list(self.exclude_uids),
            "routes": [route.to_json() for route in self.routes],
            "iptables": self.iptables,
            "nat_tables": list(self.nat_tables),
            "nonce": self.nonce,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Applied:
        return cls(
            backend=str(data["backend"]),
            port=int(data["port"]),
            ipv6=bool(data["ipv6"]),
            exclude_uids=tuple(int(u) for u in data.get("exclude_uids", ())),
            routes=tuple(Route(**r) for r in data.get("routes", ())),
            iptables=data.get("iptables"),
            nat_tables=tuple(str(t) for t in data.get("nat_tables", ())),
            nonce=str(data.get("nonce", "")),
        )


def load(path: Path) -> Applied | None:
    """The recorded state, or None when nothing is recorded (or the file is unreadable)."""
    try:
        return Applied.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged record must not block remove; rules are found by name


def save(path: Path, applied: Applied) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a record."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")  # two writers never share one
        tmp.write_text(json.dumps(applied.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise NetfilterError(f"cannot write {path}: {exc.strerror}") from exc


def clear(path: Path) -> None:
    path.unlink(missing_ok=True)
