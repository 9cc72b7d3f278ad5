"""Redirect 169.254.169.254 (and fd00:ec2::254) to the local server, and undo it exactly.

    backend = netfilter.apply(1338)      # "nft" or "iptables"; PrivilegeError / NetfilterError
    record = netfilter.install(1338)     # the same, returning the state.Applied record
    st = netfilter.status()              # .working / .problems (live rules, routes, a probe);
                                         # .known False: no CAP_NET_ADMIN to read the rules
    netfilter.remove()                   # everything metamock-shaped; PrivilegeError without CAP_NET_ADMIN
    netfilter.problems(record)           # what differs from `record` now ([] when intact)
    netfilter.repair(record)             # put back what is missing (the keeper, keeper.py)

Rules come from the files in `iptables/` (see `render.py`); routes from `routes.py`; what was
added is tagged in the kernel and recorded under /run/metamock/ (`state.py`). apply, remove and
repair hold the network namespace's lock (`lock.py`), so concurrent runs converge.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from metamock.errors import NetfilterError, PrivilegeError
from metamock.netfilter import routes, state
from metamock.netfilter._exec import Tools
from metamock.netfilter.iptables import VARIANTS, IptablesBackend
from metamock.netfilter.lock import netns_lock
from metamock.netfilter.nft import NftBackend
from metamock.netfilter.privilege import has_net_admin, require_net_admin
from metamock.netfilter.probe import probe as run_probe
from metamock.netfilter.routes import Route

__all__ = [
    "BACKENDS",
    "VARIANTS",
    "NetfilterError",
    "PrivilegeError",
    "Status",
    "apply",
    "install",
    "problems",
    "remove",
    "repair",
    "status",
]

log = logging.getLogger(__name__)
BACKENDS = ("auto", "nft", "iptables")
IPTABLES_ENV = "METAMOCK_IPTABLES"  # iptables | iptables-nft | iptables-legacy


@dataclass(frozen=True)
class Status:
    """What is in place in this network namespace, and whether it works.

    `applied`: metamock's table/chain exists. `working`: complete, as a clean apply for the
    recorded port writes it, with the routes it needs, and the probe (when run) passed.
    `problems`: one line per missing or wrong piece. `known` is False when the live rules could
    not be read (no CAP_NET_ADMIN): then `applied`, `backend`, `port` and `ipv6` are only what
    this container's record says, and nobody may conclude from them that nothing is applied.
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
    problems: tuple[str, ...] = ()
    probe: str = ""  # "connection verified: ...", "connection fails: ...", "probe not run: ..."
    working: bool = False

    @property
    def summary(self) -> str:
        if not self.known:
            if self.applied:
                recorded = f"applied (backend {self.backend}) -> 127.0.0.1:{self.port}"
            else:
                recorded = "no record in this container's /run/metamock"
            return f"netfilter: cannot tell ({self.note}); the record says: {recorded}"
        if not self.applied:
            lines = ["netfilter: not applied" + (f" ({self.note})" if self.note else "")]
            return "\n".join(lines + [f"  left behind: route {route}" for route in self.routes])
        targets = "169.254.169.254:80" + (", [fd00:ec2::254]:80" if self.ipv6 else "")
        state_word = "applied" if self.working else "broken"
        lines = [f"netfilter: {state_word} (backend {self.backend}): {targets} -> 127.0.0.1:{self.port}"]
        lines += [f"  problem: {problem}" for problem in self.problems]
        if self.exclude_uids:
            lines.append("  not redirected for uid " + ", ".join(map(str, self.exclude_uids)))
        lines += [f"  route {route}" for route in self.routes] or ["  routes: none added"]
        if self.probe:
            lines.append(f"  {self.probe}")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary


Backend = NftBackend | IptablesBackend


def _variant(environ: Mapping[str, str] | None, recorded: state.Applied | None = None) -> str:
    if recorded is not None and recorded.iptables:
        return recorded.iptables
    return (environ or {}).get(IPTABLES_ENV, "iptables") or "iptables"


def _pick(backend: str, tools: Tools, variant: str) -> Backend:
    nft, ipt = NftBackend(tools), IptablesBackend(tools, variant)
    if backend in ("auto", "nft") and nft.usable():
        return nft
    if backend == "nft":
        raise NetfilterError("backend nft: `nft list tables` fails or nft is not installed")
    if ipt.usable():
        return ipt
    raise NetfilterError(f"no usable backend: neither `nft list tables` nor `{variant} -t nat -S` works")


def _backend_of(recorded: state.Applied, tools: Tools, environ: Mapping[str, str] | None) -> Backend:
    if recorded.backend == "nft":
        return NftBackend(tools)
    return IptablesBackend(tools, _variant(environ, recorded))


def _trusted(
    recorded: state.Applied | None, tools: Tools, environ: Mapping[str, str] | None
) -> state.Applied | None:
    """The record when it describes this namespace's rules, else None (stale: ignored).

    Its nonce must be the kernel's tag; when no tag is left but metamock's table/chain is (a
    damaged redirect), the record is the best description of what should be there.
    """
    if recorded is None:
        return None
    backend = _backend_of(recorded, tools, environ)
    if backend.name == "nft" and not backend.usable():
        return None
    if backend.name == "iptables" and tools.which(_variant(environ, recorded)) is None:
        return None
    marker = backend.marker()
    if marker is not None:
        return recorded if marker.nonce == recorded.nonce else None
    return recorded if backend.present() else None


def _validate(port: int, backend: str, exclude_uids: Iterable[int]) -> tuple[int, ...]:
    if not 0 < port < 65536:
        raise NetfilterError(f"port {port}: expected 1..65535")
    uids = tuple(sorted({int(uid) for uid in exclude_uids}))
    if any(uid < 0 for uid in uids):
        raise NetfilterError("exclude uid: expected a number >= 0")
    if backend not in BACKENDS:
        raise NetfilterError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return uids


def install(
    port: int,
    backend: str = "auto",
    ipv6: bool = True,
    exclude_uids: Iterable[int] = (),
    *,
    environ: Mapping[str, str] | None = None,
    state_dir: Path | None = None,
) -> state.Applied:
    """Redirect IMDS traffic of this namespace to 127.0.0.1:`port`; returns the record written.

    Idempotent and convergent (the result always equals one clean apply, whatever was there:
    duplicates, a half-removed chain, a concurrent apply). On failure, what this call added is
    undone before raising. `ipv6` adds [fd00:ec2::254]:80 where the namespace has IPv6 at all.
    """
    uids = _validate(port, backend, exclude_uids)
    require_net_admin(port)
    with netns_lock():
        return _install(port, backend, ipv6, uids, environ=environ, state_dir=state_dir, variant=None)


def apply(
    port: int,
    backend: str = "auto",
    ipv6: bool = True,
    exclude_uids: Iterable[int] = (),
    *,
    environ: Mapping[str, str] | None = None,
    state_dir: Path | None = None,
) -> str:
    """`install`, returning only the backend used ("nft" or "iptables")."""
    return install(port, backend, ipv6, exclude_uids, environ=environ, state_dir=state_dir).backend


def _install(
    port: int,
    backend: str,
    ipv6: bool,
    uids: tuple[int, ...],
    *,
    environ: Mapping[str, str] | None,
    state_dir: Path | None,
    variant: str | None,
) -> state.Applied:
    """apply's work; the caller holds the lock."""
    if ipv6 and not routes.ipv6_available():
        # IPv6 is off here, so no client can use the IPv6 address: redirect IPv4 alone.
        log.warning("IPv6 is disabled in this network namespace; redirecting IPv4 only")
        ipv6 = False
    tools, path = Tools.from_environ(environ), state.state_path(state_dir, environ)
    previous = _trusted(state.load(path), tools, environ)
    chosen = _pick(backend, tools, variant or _variant(environ))
    marker = chosen.marker()
    nonce = marker.nonce if marker is not None else state.new_nonce()  # the same apply, renewed
    chosen_variant = chosen.variant if isinstance(chosen, IptablesBackend) else None
    same = previous is not None and (previous.backend, previous.iptables) == (chosen.name, chosen_variant)
    owned_before = previous.nat_tables if previous is not None and same else ()
    added, kept = routes.ensure(ipv6)
    try:
        owned = chosen.apply(port, ipv6, uids, nonce, owned_before)
    except BaseException:
        routes.remove(added)  # the backend already undid its own part
        raise
    record = state.Applied(
        backend=chosen.name,
        port=port,
        ipv6=ipv6,
        exclude_uids=uids,
        routes=tuple(kept + added),
        iptables=chosen_variant,
        nat_tables=tuple(sorted(owned)),
        nonce=nonce,
    )
    try:
        state.save(path, record)
    except BaseException:
        # Without a record the redirect would still work, but this call failed: leave nothing.
        chosen.remove(record.nat_tables)
        routes.remove(added)
        raise
    if previous is not None and not same:
        # Switching backend or variant: keep only the new one.
        _backend_of(previous, tools, environ).remove(previous.nat_tables)
    return record


def _remove_rules(recorded: state.Applied | None, tools: Tools, environ: Mapping[str, str] | None) -> bool:
    """Everything metamock-shaped, found by name: the nft table, the chains of the iptables
    variant `environ` names and of the one the record names."""
    removed = False
    nft = NftBackend(tools)
    if nft.usable():
        removed = nft.remove()
    variants = {_variant(environ), _variant(environ, recorded)}
    for variant in sorted(variants):
        ipt = IptablesBackend(tools, variant)
        if tools.which(ipt.variant) is not None:
            removed = ipt.remove(recorded.nat_tables if recorded else ()) or removed
    return removed


def remove(*, environ: Mapping[str, str] | None = None, state_dir: Path | None = None) -> bool:
    """Delete metamock's rules, table/chains (duplicates too) and routes; True when anything was there.

    Without CAP_NET_ADMIN nothing can be read or deleted, so nothing can be said either:
    PrivilegeError, even when this container holds no record (the rules may have been applied
    from another container of the network namespace, whose /run is not ours).
    """
    path = state.state_path(state_dir, environ)
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
    with netns_lock():
        removed = _remove_rules(_trusted(recorded, tools, environ), tools, environ)
        removed = bool(routes.remove()) or removed
        state.clear(path)
    return removed


def problems(record: state.Applied, *, environ: Mapping[str, str] | None = None) -> list[str]:
    """What differs now from the redirect `record` describes (rules and routes); [] when intact."""
    backend = _backend_of(record, Tools.from_environ(environ), environ)
    found = backend.problems(record.port, record.ipv6, record.exclude_uids)
    return found + routes.missing(record.ipv6)


def repair(
    record: state.Applied,
    *,
    environ: Mapping[str, str] | None = None,
    state_dir: Path | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> tuple[state.Applied, list[str]]:
    """Under the lock: when anything of `record` is missing, apply it again.

    Returns (the record now in force, what was missing); ([] when nothing was, or `stopping()`).
    """
    with netns_lock():
        if stopping():
            return record, []
        found = problems(record, environ=environ)
        if not found:
            return record, []
        again = _install(
            record.port, record.backend, record.ipv6, record.exclude_uids,
            environ=environ, state_dir=state_dir, variant=record.iptables,
        )  # fmt: skip
        return again, found


def _live(trusted: state.Applied | None, tools: Tools, environ: Mapping[str, str] | None) -> Backend | None:
    """The backend holding metamock's rules: the record's, else nft, else the iptables variant."""
    if trusted is not None:
        return _backend_of(trusted, tools, environ)
    nft = NftBackend(tools)
    if nft.usable() and nft.present():
        return nft
    ipt = IptablesBackend(tools, _variant(environ))
    if tools.which(ipt.variant) is not None and ipt.present():
        return ipt
    return None


def status(
    *, environ: Mapping[str, str] | None = None, state_dir: Path | None = None, probe: bool = True
) -> Status:
    """What is in place now, verified: the live rules against what a clean apply writes for the
    recorded port, uids and IPv6, the routes, and (`probe`) a connection through the redirect."""
    recorded = state.load(state.state_path(state_dir, environ))
    if not has_net_admin():
        ours = tuple(routes.ours())
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
    ours = tuple(routes.ours())
    trusted = _trusted(recorded, tools, environ)
    live = _live(trusted, tools, environ)
    if live is None:
        return Status(False, None, None, False, ours, problems=("no metamock rules in place",))
    listing = live.listing()
    note = ""
    if trusted is not None:
        port: int | None = trusted.port
        ipv6, uids = trusted.ipv6, trusted.exclude_uids
    else:
        marker = live.marker()
        ports = sorted({int(p) for p in _PORTS.findall(listing)})
        port = marker.port if marker is not None else (ports[0] if len(ports) == 1 else None)
        ipv6, uids = live.live_ipv6(listing), live.live_uids(listing)
        note = (
            "found rules without a record (state file lost); `remove` still removes them"
            if recorded is None
            else "the record here is from another apply (stale) and was ignored"
        )
    if port is None:
        found = ["the port the rules point at is unknown (no record, no metamock tag)"]
    else:
        found = live.problems(port, ipv6, uids, listing if live.name == "nft" else None)
        found += routes.missing(ipv6)
    checked = ""
    ok: bool | None = None
    if probe and port is not None and not found:
        result = run_probe(port, uids)
        checked, ok = result.detail, result.ok
    return Status(
        True,
        live.name,
        port,
        ipv6,
        ours,
        uids,
        rules=listing,
        note=note,
        problems=tuple(found),
        probe=checked,
        working=not found and ok is not False,
    )


_PORTS = re.compile(r"(?:redirect to :|--to-ports )(\d+)")
