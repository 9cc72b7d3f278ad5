"""The daemon-thread runner: results and errors come back; a hung call is abandoned, not joined."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from metamock.threads import in_daemon_thread


async def test_result_and_thread_name() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    assert await in_daemon_thread(work, name="metamock-test-worker") == 42
    assert seen[0] is not threading.main_thread()
    assert seen[0].daemon
    assert seen[0].name == "metamock-test-worker"


async def test_none_is_a_result() -> None:
    def nothing() -> int | None:
        return None

    assert await in_daemon_thread(nothing) is None


async def test_the_error_is_raised_in_the_awaiting_coroutine() -> None:
    def fail() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        await in_daemon_thread(fail)


async def test_the_loop_keeps_running_meanwhile() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await in_daemon_thread(lambda: time.sleep(0.2))
    ticker.cancel()
    assert ticks >= 5


async def test_cancelling_abandons_the_call() -> None:
    release = threading.Event()
    ended = threading.Event()

    def hang() -> None:
        release.wait(10)
        ended.set()

    waiting = asyncio.create_task(in_daemon_thread(hang))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()  # the thread ends later; its outcome is dropped quietly
    assert await asyncio.to_thread(ended.wait, 5)
    await asyncio.sleep(0.05)


def test_a_hung_call_does_not_hold_up_exit() -> None:
    # asyncio.run() ends while the thread still sleeps: the process exits at once, quietly.
    code = (
        "import asyncio, time\n"
        "from metamock.threads import in_daemon_thread\n"
        "async def main():\n"
        "    try:\n"
        "        await asyncio.wait_for(in_daemon_thread(lambda: time.sleep(30)), 0.1)\n"
        "    except TimeoutError:\n"
        "        print('gave up')\n"
        "asyncio.run(main())\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=20
    )
    assert time.monotonic() - started < 10
    assert done.returncode == 0
    assert done.stdout == "gave up\n"
    assert done.stderr == ""
