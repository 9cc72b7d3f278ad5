"""Running the service as a process: signals in, a graceful stop and an exit code out.

One life cycle for `metamock serve` and `metamock sidecar`; the sidecar adds its agents through
`Hooks`. In order:

1. The signal handlers go in before anything slow: as PID 1 a signal without a handler is
   dropped, and elsewhere SIGHUP's default would kill the process mid-start.
2. The service starts unless a SIGTERM/SIGINT comes first; then the start is cancelled (the
   service undoes what it had set up, the redirect included) and the exit code is 0.
3. `hooks.prepare(service)`, then (unless stopped meanwhile) `hooks.run(service)` beside the
   server. SIGHUP reloads the config (and goes to `hooks.on_signal`, as do `hooks.forwarded`).
4. The first SIGTERM: `hooks.stop(SIGTERM)`, and the stop notice is published for
   `--stop-notice` seconds while `hooks.run` winds down; the listener closes after both (a
   second SIGTERM/SIGINT cuts the notice short). SIGINT (Ctrl-C): `hooks.stop(SIGINT)`, no
   notice (it is for ECS's SIGTERM). When `hooks.run` returns by itself (a supervised program
   failed for good), its code ends the process without a notice: the task is not being stopped.
5. `hooks.close()`, then the service stops (listener, redirect, source) whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from metamock.errors import MetamockError
from metamock.runtime import install_process_effects
from metamock.service import Service
from metamock.settings import Settings
from metamock.values import is_loopback

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Hooks:
    """What a command runs beside the server. This base runs nothing (`metamock serve`)."""

    forwarded: tuple[int, ...] = ()  # signals passed to on_signal besides SIGHUP
    # After SIGTERM the stop notice is served for --stop-notice seconds even once `run` returned (an
    # ECS task's other containers may still read it); False ends it with `run` (`metamock run`).
    notice_outlives_run = True

    def __init__(self) -> None:
        self._stopped = asyncio.Event()

    async def prepare(self, service: Service) -> None:
        """After the service started, before `run`: set up what `run` needs."""

    async def run(self, service: Service) -> int:
        """Work beside the server; return the exit code, soon after `stop()` when it is called."""
        await self._stopped.wait()
        return 0

    def stop(self, signum: int) -> None:
        """The first SIGTERM/SIGINT (called from the signal handler): make `run` return."""
        self._stopped.set()

    def on_signal(self, signum: int) -> None:
        """SIGHUP (after the config reload) or one of `forwarded`."""

    def again(self, signum: int) -> None:
        """A SIGTERM/SIGINT after the first (which also cuts the stop notice short)."""

    async def close(self) -> None:
        """Undo `prepare`; runs before the service stops, even after a failure."""


async def run_service(
    settings: Settings,
    hooks: Hooks | None = None,
    *,
    on_ready: Callable[[Service], None] | None = None,
    start: Callable[[Settings], Awaitable[Service]] = Service.start,
) -> int:
    """Run the service (and `hooks`) until a stop signal or `hooks.run` ends; the exit code."""
    install_process_effects()
    hooks = hooks or Hooks()
    life = _Signals(hooks)
    life.install()
    try:
        service = await life.unless_stopped(start(settings))
        if service is None:
            log.info("stopped during start-up")
            return 0
        life.service = service
        if (exposed := remote_exposure(settings, service.port)) is not None:
            log.warning("%s", exposed)
        try:
            await hooks.prepare(service)
            if life.first is not None:  # stopped while preparing: run nothing
                return 0
            # Everything made at start-up lives until exit: keep it out of the cyclic GC's scans,
            # which otherwise walk aiohttp's and the tree's objects on every full collection.
            gc.freeze()
            if on_ready is not None:
                on_ready(service)
            return await _serve(service, hooks, life)
        finally:
            try:
                await hooks.close()
            finally:
                await service.stop(stop_notice=False)
    finally:
        life.uninstall()


def remote_exposure(settings: Settings, port: int) -> str | None:
    """What a non-loopback listener hands out without a token, and the fix; None when nothing.

    The hop limit is no guard here: it keeps only the token reply from crossing a router, and
    with tokens optional an IMDSv1 GET needs none, so the role goes to whoever routes to us.
    """
    remote = [host for host in settings.hosts if not is_loopback(host)]
    if not remote or settings.tokens == "required":
        return None
    return (
        f"--allow-remote with --tokens optional: role credentials go to any client that can reach "
        f"{', '.join(remote)} port {port}, however many hops away (IMDSv1 GETs need no "
        "token; the hop limit protects only tokens). Set --tokens required"
    )


async def _serve(service: Service, hooks: Hooks, life: _Signals) -> int:
    running = asyncio.ensure_future(hooks.run(service))
    stopping = asyncio.ensure_future(life.stopped.wait())
    try:
        first: list[asyncio.Future[Any]] = [running, stopping]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if life.first is None:
        return running.result()  # ended by itself: its code, no notice
    notice: asyncio.Future[None] | None = None
    if life.first == signal.SIGTERM:
        notice = asyncio.ensure_future(service.publish_stop_notice())
    try:
        code = await running  # while the notice is served
        if notice is not None and hooks.notice_outlives_run:
            cut = asyncio.ensure_future(life.again.wait())
            last: list[asyncio.Future[Any]] = [notice, cut]
            await asyncio.wait(last, return_when=asyncio.FIRST_COMPLETED)
            cut.cancel()
    finally:
        if notice is not None:
            notice.cancel()
    return code


class _Signals:
    """The process's signal handlers and what they have seen."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self.loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()  # the first SIGTERM/SIGINT
        self.again = asyncio.Event()  # a second one
        self.first: int | None = None
        self.service: Service | None = None
        self._installed: list[int] = []

    def install(self) -> None:
        for stop in STOP_SIGNALS:
            self._add(stop, self._on_stop)
        for other in (signal.SIGHUP, *self.hooks.forwarded):
            self._add(other, self._on_other)
        log.debug("signal handlers installed; starting the server")

    def uninstall(self) -> None:
        for sig in self._installed:
            with contextlib.suppress(Exception):
                self.loop.remove_signal_handler(sig)
        self._installed.clear()

    async def unless_stopped(self, starting: Awaitable[Service]) -> Service | None:
        """The started service; None when a stop signal came first (the start is cancelled)."""
        start = asyncio.ensure_future(starting)
        stop = asyncio.ensure_future(self.stopped.wait())
        waiters: set[asyncio.Future[Any]] = {start, stop}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if start.done() and self.first is None:
            try:
                return start.result()
            except OSError as exc:
                raise MetamockError(f"cannot start: {exc}") from exc
        # Stopped first: the cancelled start undoes what it had set up. What it raised meanwhile
        # (an upstream still failing, say) is moot: the stop was asked for, so the exit is 0.
        start.cancel()
        try:
            service = await start
        except (asyncio.CancelledError, MetamockError, OSError) as exc:
            log.debug("start-up abandoned: %s", exc or type(exc).__name__)
            return None
        await service.stop(stop_notice=False)  # it had finished as the signal came
        return None

    def _add(self, sig: int, handler: Callable[[int], None]) -> None:
        self.loop.add_signal_handler(sig, handler, sig)
        self._installed.append(sig)

    def _on_stop(self, signum: int) -> None:
        if self.first is not None:
            self.again.set()
            self.hooks.again(signum)
            return
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.first = signum
        self.stopped.set()
        self.hooks.stop(signum)

    def _on_other(self, signum: int) -> None:
        if signum == signal.SIGHUP and self.service is not None:
            self.service.reload_config()
        self.hooks.on_signal(signum)
