"""Keep the redirect that `serve --netfilter` / `sidecar` applied: put it back when it goes.

Why a periodic check and not netlink/nft events: the rules can be removed through three kernel
interfaces (nf_tables, legacy x_tables, which sends no event, and rtnetlink for the route), and
a subscription per interface would still need a check to know what is missing. One check costs
one `nft list table` (or two `iptables-save`) and one netlink route lookup, off the event loop,
every INTERVAL seconds: well inside the 5 s the contract gives (see docs/netfilter.md for the
measured cost). Repairs go through netfilter.repair, which re-checks under the namespace's lock,
so a concurrent `metamock netfilter apply` is never taken for damage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping

from metamock.errors import MetamockError
from metamock.netfilter.state import Applied

log = logging.getLogger(__name__)

INTERVAL = 2.0  # seconds between checks: repair lands within INTERVAL + one apply (< 5 s)


class RedirectKeeper:
    """`start()` on a running loop, `await stop()` before removing the redirect."""

    def __init__(
        self, record: Applied, *, interval: float = INTERVAL, environ: Mapping[str, str] | None = None
    ) -> None:
        self.record = record
        self.interval = interval
        self.environ = environ
        self.repairs = 0
        self.last_repair: str | None = None  # what was missing at the last repair
        self.last_repair_at: float | None = None  # time.time() of it
        self._stopping = threading.Event()  # read by the check thread
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop checking, and wait for a check in progress: after this nothing re-applies."""
        self._stopping.set()
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            if self._stopping.is_set():
                return
            # Not abandoned on stop (unlike in_daemon_thread): a repair must end before remove.
            await asyncio.to_thread(self.check)

    def check(self) -> list[str]:
        """One check (blocking): repair what is missing; returns what was (or [])."""
        from metamock import netfilter

        started = time.monotonic()
        try:
            if not netfilter.problems(self.record, environ=self.environ):
                self._last_error = ""
                return []
            record, missing = netfilter.repair(
                self.record, environ=self.environ, stopping=self._stopping.is_set
            )
        except MetamockError as exc:
            if str(exc) != self._last_error:  # one line per distinct failure, not one per check
                log.warning("netfilter redirect damaged and not repaired: %s", exc)
                self._last_error = str(exc)
            return []
        self._last_error = ""
        self.record = record
        if missing:
            self.repairs += 1
            self.last_repair = "; ".join(missing)
            self.last_repair_at = time.time()
            log.warning(
                "netfilter redirect repaired in %.2f s (repair %d): %s",
                time.monotonic() - started,
                self.repairs,
                self.last_repair,
            )
        return missing
