"""What apply put in place, in a small JSON file under /run/metamock/, one per network namespace."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metamock.errors import NetfilterError
from metamock.netfilter.routes import Route

STATE_DIR = Path("/run/metamock")


def netns_id() -> str:
    """The inode of this process's network namespace: tells namespaces apart on one /run."""
    try:
        return str(Path("/proc/self/ns/net").stat().st_ino)
    except OSError:
        return "default"


def state_path(state_dir: Path = STATE_DIR) -> Path:
    return state_dir / f"netfilter-{netns_id()}.json"


@dataclass(frozen=True)
class Applied:
    """The record of one apply: enough for status and for an exact remove."""

    backend: str
    port: int
    ipv6: bool
    exclude_uids: tuple[int, ...] = ()
    routes: tuple[Route, ...] = ()  # added by metamock (not those the host had)
    iptables: str | None = None  # variant, for the iptables backend
    nat_tables: tuple[str, ...] = ()  # nf_tables nat tables created by iptables-nft

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "port": self.port,
            "ipv6": self.ipv6,
            "exclude_uids": list(self.exclude_uids),
            "routes": [route.to_json() for route in self.routes],
            "iptables": self.iptables,
            "nat_tables": list(self.nat_tables),
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
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(applied.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise NetfilterError(f"cannot write {path}: {exc.strerror}") from exc


def clear(path: Path) -> None:
    path.unlink(missing_ok=True)
