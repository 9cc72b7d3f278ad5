"""Redirect 169.254.169.254 (and fd00:ec2::254) to the local server, and undo it exactly.

    backend = netfilter.apply(1338)      # "nft" or "iptables"; PrivilegeError / NetfilterError
    netfilter.status().applied           # True (`.known` False: no CAP_NET_ADMIN to read the rules)
    netfilter.remove()                   # exactly what apply added; PrivilegeError without CAP_NET_ADMIN

Rules come from the files in `iptables/` (see `render.py`); routes from `routes.py`; what was
added is recorded per network namespace under /run/metamock/ (`state.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from metamock.errors import NetfilterError, PrivilegeError
from metamock.netfilter import routes, state
from metamock.netfilter._exec import Tools
from metamock.netfilter.iptables import VARIANTS, IptablesBackend
from metamock.netfilter.nft import NftBackend
from metamock.netfilter.privilege import has_net_admin, require_net_admin
from metamock.netfilter.routes import Route

__all__ = [
    "BACKENDS",
    "VARIANTS",
    "NetfilterError",
    "PrivilegeError",
    "Status",
    "apply",
    "remove",
    "status",
]

log = logging.getLogger(__name__)
BACKENDS = ("auto", "nft", "iptables")
IPTABLES_ENV = "METAMOCK_IPTABLES"  # iptables | iptables-nft | iptables-legacy


@dataclass(frozen=True)
class Status:
    """What is in place in this network namespace.

    `known` is False when the live rules could not be read (no CAP_NET_ADMIN): then `applied`,
    `backend`, `port` and `ipv6` are only what this container's record says, and nobody may
    conclude from them that nothing is applied.
    """

    applied: bool
    backend: str | None
    port: int | None
    ipv6: bool
    routes: tuple[Route, ...]
    exclude_uids: tuple[int, ...] = ()
    rules: str = ""  # the listing of metamock's table / chains, as the tool prints it
    note: str = ""
    known: bool = True

    @property
    def summary(self) -> str:
        if not self.known:
            if self.applied:
                recorded = f"applied (backend {self.backend}) -> 127.0.0.1:{self.port}"
            else:
                recorded = "no record in this container's /run/metamock"
            return f"netfilter: cannot tell ({self.note}); the record says: {recorded}"
        if not self.applied:
            return "netfilter: not applied" + (f" ({self.note})" if self.note else "")
        targets = "169.254.169.254:80" + (", [fd00:ec2::254]:80" if self.ipv6 else "")
        lines = [f"netfilter: applied (backend {self.backend}): {targets} -> 127.0.0.1:{self.port}"]
        if self.exclude_uids:
            lines.append("  not redirected for uid " + ", ".join(map(str, self.exclude_uids)))
        lines += [f"  route {route}" for route in self.routes] or ["  routes: none added"]
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary


def _variant(environ: Mapping[str, str] | None, recorded: state.Applied | None = None) -> str:
    if recorded is not None and recorded.iptables:
        return recorded.iptables
    return (environ or {}).get(IPTABLES_ENV, "iptables") or "iptables"


def _pick(backend: str, tools: Tools, variant: str) -> NftBackend | IptablesBackend:
    nft, ipt = NftBackend(tools), IptablesBackend(tools, variant)
    if backend in ("auto", "nft") and nft.usable():
        return nft
    if backend == "nft":
        raise NetfilterError("backend nft: `nft list tables` fails or nft is not installed")
    if ipt.usable():
        return ipt
    raise NetfilterError(f"no usable backend: neither `nft list tables` nor `{variant} -t nat -S` works")


def apply(
    port: int,
    backend: str = "auto",
    ipv6: bool = True,
    exclude_uids: Iterable[int] = (),
    *,
    environ: Mapping[str, str] | None = None,
    state_dir: Path = state.STATE_DIR,
) -> str:
    """Redirect IMDS traffic of this namespace to 127.0.0.1:`port`; returns the backend used.

    Idempotent (twice == once). On any failure, what this call added is undone before raising.
    `ipv6` adds [fd00:ec2::254]:80 where the namespace has IPv6 at all.
    """
    if not 0 < port < 65536:
        raise NetfilterError(f"port {port}: expected 1..65535")
    uids = tuple(sorted({int(uid) for uid in exclude_uids}))
    if any(uid < 0 for uid in uids):
        raise NetfilterError("exclude uid: expected a number >= 0")
    if backend not in BACKENDS:
        raise NetfilterError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    require_net_admin(port)
    if ipv6 and not routes.ipv6_available():
        # IPv6 is off here, so no client can use the IPv6 address: redirect IPv4 alone.
        log.warning("IPv6 is disabled in this network namespace; redirecting IPv4 only")
        ipv6 = False
    tools, path = Tools.from_environ(environ), state.state_path(state_dir)
    previous = state.load(path)
    chosen = _pick(backend, tools, _variant(environ))
    added, kept = routes.ensure(ipv6)
    try:
        created = chosen.apply(port, ipv6, uids)
    except BaseException:
        routes.remove(added)  # the backend already undid its own part
        raise
    variant = chosen.variant if isinstance(chosen, IptablesBackend) else None
    same = previous is not None and (previous.backend, previous.iptables) == (chosen.name, variant)
    nat_tables = set(created) | (set(previous.nat_tables) if previous is not None and same else set())
    record = state.Applied(
        backend=chosen.name,
        port=port,
        ipv6=ipv6,
        exclude_uids=uids,
        routes=tuple(kept + added),
        iptables=variant,
        nat_tables=tuple(sorted(nat_tables)),
    )
    try:
        state.save(path, record)
    except BaseException:
        # Without a record, remove could not tell our nat tables apart: leave nothing behind.
        chosen.remove(record.nat_tables)
        routes.remove(added)
        raise
    if previous is not None and not same:
        _remove_rules(previous, tools, environ)  # switching backend or variant: keep only the new one
    return chosen.name


def _remove_rules(recorded: state.Applied | None, tools: Tools, environ: Mapping[str, str] | None) -> bool:
    removed = False
    nft = NftBackend(tools)
    if (recorded is None or recorded.backend == "nft") and nft.usable():
        removed = nft.remove()
    if recorded is None or recorded.backend == "iptables":
        ipt = IptablesBackend(tools, _variant(environ, recorded))
        if tools.which(ipt.variant) is not None:
            removed = ipt.remove(recorded.nat_tables if recorded else ()) or removed
    return removed


def remove(*, environ: Mapping[str, str] | None = None, state_dir: Path = state.STATE_DIR) -> bool:
    """Delete metamock's rules, table/chains and routes; True when anything was there.

    Without CAP_NET_ADMIN nothing can be read or deleted, so nothing can be said either:
    PrivilegeError, even when this container holds no record (the rules may have been applied
    from another container of the network namespace, whose /run is not ours).
    """
    path = state.state_path(state_dir)
    recorded = state.load(path)
    if not has_net_admin():
        seen = (
            f"the record says {recorded.backend} rules to :{recorded.port} are in place"
            if recorded is not None
            else "this container has no record of them, but rules applied elsewhere would not show"
        )
        raise PrivilegeError(
            "CAP_NET_ADMIN is missing, so metamock's redirect rules and routes can be neither read "
            f"nor removed here ({seen}); nothing was changed. Run `metamock netfilter remove` "
            "with CAP_NET_ADMIN (as root, or in the container granted NET_ADMIN)"
        )
    tools = Tools.from_environ(environ)
    removed = _remove_rules(recorded, tools, environ)
    removed = bool(routes.remove()) or removed
    state.clear(path)
    return removed


def status(*, environ: Mapping[str, str] | None = None, state_dir: Path = state.STATE_DIR) -> Status:
    """What is in place now: from the live rules when we may read them, else from the record."""
    recorded = state.load(state.state_path(state_dir))
    ours = tuple(routes.ours())
    if not has_net_admin():
        note = "without CAP_NET_ADMIN the rules cannot be read"
        if recorded is None:
            return Status(False, None, None, False, ours, note=note, known=False)
        return Status(
            True,
            recorded.backend,
            recorded.port,
            recorded.ipv6,
            ours,
            recorded.exclude_uids,
            note=note,
            known=False,
        )
    tools = Tools.from_environ(environ)
    nft = NftBackend(tools)
    live: NftBackend | IptablesBackend | None = None
    if (recorded is None or recorded.backend == "nft") and nft.usable() and nft.present():
        live = nft
    elif recorded is None or recorded.backend == "iptables":
        ipt = IptablesBackend(tools, _variant(environ, recorded))
        if tools.which(ipt.variant) is not None and ipt.present():
            live = ipt
    if live is None:
        note = "rules recorded but not found: run `metamock netfilter apply` again" if recorded else ""
        return Status(False, None, None, False, ours, note=note)
    if recorded is None:
        note = "found rules without a record (state file lost); `remove` still removes them"
        return Status(True, live.name, None, False, ours, rules=live.listing(), note=note)
    return Status(
        True, live.name, recorded.port, recorded.ipv6, ours, recorded.exclude_uids, rules=live.listing()
    )
