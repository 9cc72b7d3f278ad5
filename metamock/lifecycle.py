"""Running the service as a process: signals in, a graceful stop and an exit code out."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable

from metamock.errors import MetamockError
from metamock.service import Service
from metamock.settings import Settings

log = logging.getLogger(__name__)


async def serve_until_signal(settings: Settings, on_ready: Callable[[Service], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT (exit 0 after a graceful stop); SIGHUP reloads the config.

    SIGTERM (how ECS stops a task) publishes the stop notice for `--stop-notice` seconds first;
    SIGINT (Ctrl-C on a laptop) stops at once. A signal during start-up cancels the start, which
    undoes whatever it had set up (the redirect included).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(sig: int) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        starting = asyncio.ensure_future(Service.start(settings))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            log.info("stopped during start-up")
            return 0
        stopping.cancel()
        try:
            service = starting.result()
        except OSError as exc:
            raise MetamockError(f"cannot start: {exc}") from exc
    except BaseException:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        raise
    loop.add_signal_handler(signal.SIGHUP, service.reload_config)
    # Everything made at start-up lives until exit: keep it out of the cyclic GC's scans, which
    # otherwise walk aiohttp's and the tree's objects on every full collection under load.
    gc.freeze()
    if on_ready is not None:
        on_ready(service)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if received[:1] == [signal.SIGTERM]:
            # A second SIGTERM/SIGINT during the notice skips the rest of it.
            notice = asyncio.ensure_future(service.publish_stop_notice())
            second = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, second.set)
            waiter = asyncio.ensure_future(second.wait())
            await asyncio.wait({notice, waiter}, return_when=asyncio.FIRST_COMPLETED)
            notice.cancel()
            waiter.cancel()
        await service.stop(stop_notice=False)
    return 0
