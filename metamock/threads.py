"""Blocking work (botocore, the netfilter tools) off the event loop, on threads that can be abandoned."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_daemon_thread(fn: Callable[[], T], *, name: str = "metamock-worker") -> T:
    """Run blocking `fn` on a new daemon thread called `name` and await its result or error.

    Not asyncio.to_thread: its executor is joined when asyncio.run ends, so one hung call (an STS
    request, a wedged `nft`) would hold up exit. Cancelling the awaiting task abandons the thread:
    its outcome is dropped when it ends, even after the loop has closed.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: tuple[T] | BaseException) -> None:
        if future.done():  # the waiter gave up (cancelled)
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[0])

    def work() -> None:
        outcome: tuple[T] | BaseException
        try:
            outcome = (fn(),)
        except BaseException as exc:  # handed to the awaiting coroutine, which decides
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody waits
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
