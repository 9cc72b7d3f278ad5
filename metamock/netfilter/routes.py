"""The routes the redirect needs, via pyroute2: added only when the address has no route yet.

A packet reaches the nat OUTPUT hook only after routing found it a way out, so in a namespace
with nothing but `lo` the IMDS addresses need a route first. Routes metamock adds carry their
own protocol number, so `remove` finds exactly those even when the state file is gone.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from metamock.errors import NetfilterError

T = TypeVar("T")
IMDS_V4 = "169.254.169.254"
IMDS_V6 = "fd00:ec2::254"
# Route protocol tag (`ip route` shows "proto 109"); 109 is 'm', unused by routing daemons.
RTPROT_METAMOCK = 109
_RT_SCOPE_LINK = 253


@dataclass(frozen=True)
class Route:
    """One route metamock added: `dst/prefix dev lo [src ...] proto 109`."""

    dst: str
    prefix: int
    src: str | None = None

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.dst else socket.AF_INET

    def __str__(self) -> str:
        src = f" src {self.src}" if self.src else ""
        return f"{self.dst}/{self.prefix} dev lo{src} proto {RTPROT_METAMOCK}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


WANTED_V4 = Route(IMDS_V4, 32, "127.0.0.1")  # without src the kernel picks 0.0.0.0: no replies
WANTED_V6 = Route(IMDS_V6, 128)


def ipv6_available(proc_sys: Path = Path("/proc/sys/net/ipv6/conf/lo/disable_ipv6")) -> bool:
    """False where IPv6 is off in this namespace (Docker's default for IPv4-only networks)."""
    try:
        return proc_sys.read_text(encoding="ascii").strip() == "0"
    except OSError:
        return False


def wanted(ipv6: bool) -> list[Route]:
    return [WANTED_V4, WANTED_V6] if ipv6 else [WANTED_V4]


def _off_loop(fn: Callable[[], T]) -> T:
    """Run `fn` where pyroute2 can work: its sync IPRoute drives an asyncio loop of its own,
    which fails inside a running loop (`metamock serve --netfilter`), so use a thread there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metamock-routes") as pool:
        return pool.submit(fn).result()


@contextmanager
def _iproute() -> Iterator[Any]:
    """A netlink socket on a plain selector loop of our own: pyroute2 cannot use uvloop's
    (no AF_NETLINK datagram endpoints), which the policy would hand it under `serve`."""
    from pyroute2 import IPRoute  # imported only when routes are touched

    loop = asyncio.SelectorEventLoop()
    try:
        with IPRoute(use_event_loop=loop) as ipr:
            yield ipr
        loop.run_until_complete(asyncio.sleep(0))  # let the closed transport finish closing
    finally:
        loop.close()


def _netlink_error_type() -> type[Exception]:
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError  # type: ignore[no-any-return]


def _code(exc: Exception) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _netlink_error(exc: Exception, what: str) -> NetfilterError:
    code = _code(exc)
    reason = errno.errorcode.get(code, str(code)) if isinstance(code, int) else str(exc)
    return NetfilterError(f"{what}: {reason}")


def _has_route(ipr: Any, route: Route) -> bool:
    netlink_error = _netlink_error_type()
    try:
        ipr.route("get", dst=route.dst, family=route.family)
    except netlink_error as exc:
        if _code(exc) in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
            return False
        raise _netlink_error(exc, f"route get {route.dst}") from exc
    return True


def _add(ipr: Any, route: Route) -> bool:
    netlink_error = _netlink_error_type()
    lo = ipr.link_lookup(ifname="lo")[0]
    extra: dict[str, Any] = {"prefsrc": route.src, "scope": _RT_SCOPE_LINK} if route.src else {}
    try:
        ipr.route(
            "add",
            dst=f"{route.dst}/{route.prefix}",
            oif=lo,
            family=route.family,
            proto=RTPROT_METAMOCK,
            **extra,
        )
    except netlink_error as exc:
        if _code(exc) == errno.EEXIST:
            return False  # added by someone else since we looked: a route is all we need
        raise _netlink_error(exc, f"ip route add {route}") from exc
    return True


def ensure(ipv6: bool) -> tuple[list[Route], list[Route]]:
    """Add the wanted routes where the address has no route; returns (added now, ours already there)."""
    return _off_loop(lambda: _ensure(ipv6))


def _ensure(ipv6: bool) -> tuple[list[Route], list[Route]]:
    added: list[Route] = []
    with _iproute() as ipr:
        ours = _ours(ipr)
        kept = [route for route in wanted(ipv6) if route in ours]
        try:
            for route in wanted(ipv6):
                if route in ours or _has_route(ipr, route):
                    continue
                if _add(ipr, route):
                    added.append(route)
            # IPv6 on before, off now: drop our IPv6 route so the result equals a fresh apply.
            _delete(ipr, [route for route in ours if route not in wanted(ipv6)])
        except BaseException:
            _delete(ipr, added, quiet=True)
            raise
    return added, kept


def _ours(ipr: Any) -> list[Route]:
    """Routes to the IMDS addresses on lo that carry metamock's protocol tag."""
    found = []
    for family, want in ((socket.AF_INET, WANTED_V4), (socket.AF_INET6, WANTED_V6)):
        for msg in ipr.route("dump", family=family, proto=RTPROT_METAMOCK):
            if msg.get("dst") == want.dst and msg.get("dst_len") == want.prefix:
                found.append(want)
    return found


def _delete(ipr: Any, routes: list[Route], *, quiet: bool = False) -> None:
    netlink_error = _netlink_error_type()
    for route in routes:
        try:
            ipr.route(
                "del",
                dst=f"{route.dst}/{route.prefix}",
                family=route.family,
                proto=RTPROT_METAMOCK,
                # IPv4 deletes match the scope too; pyroute2 would send "universe" otherwise.
                scope=_RT_SCOPE_LINK if route.src else 0,
            )
        except netlink_error as exc:
            if _code(exc) == errno.ESRCH:
                continue  # already gone: remove is idempotent
            if not quiet:
                raise _netlink_error(exc, f"ip route del {route}") from exc


def missing(ipv6: bool) -> list[str]:
    """The IMDS addresses the redirect needs that have no route now (ours or the host's)."""
    return _off_loop(lambda: _missing(ipv6))


def _missing(ipv6: bool) -> list[str]:
    with _iproute() as ipr:
        return [f"no route to {route.dst}" for route in wanted(ipv6) if not _has_route(ipr, route)]


def ours() -> list[Route]:
    """metamock's routes currently in place."""
    return _off_loop(_ours_now)


def _ours_now() -> list[Route]:
    with _iproute() as ipr:
        return _ours(ipr)


def remove(routes: list[Route] | None = None) -> list[Route]:
    """Delete `routes` (default: every route tagged as metamock's); returns what was there."""
    return _off_loop(lambda: _remove(routes))


def _remove(routes: list[Route] | None) -> list[Route]:
    with _iproute() as ipr:
        present = _ours(ipr)
        targets = [r for r in (present if routes is None else routes) if r in present]
        _delete(ipr, targets)
    return targets


def loopback_up() -> None:
    """Bring `lo` up: a new network namespace starts with it down, and nothing listens or routes
    there until it is up (`metamock run`)."""

    def up() -> None:
        with _iproute() as ipr:
            try:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            except _netlink_error_type() as exc:
                raise _netlink_error(exc, "ip link set lo up") from exc

    _off_loop(up)
