"""The one life cycle (metamock/lifecycle.py) that `serve` and `sidecar` share, in-process: real
signals sent to this process, a recording `Hooks`, a StaticSource service on port 0."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from metamock.lifecycle import Hooks, run_service
from metamock.service import Service
from metamock.settings import Settings
from tests.imds_fixtures import fixture_credentials, fixture_source

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class Recorder(Hooks):
    """Logs every call; `run` ends `linger` seconds after stop() (or by itself after `fail_after`)."""

    forwarded = (signal.SIGQUIT,)

    def __init__(self, *, linger: float = 0.0, fail_after: float | None = None) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.linger = linger
        self.fail_after = fail_after
        self.service: Service | None = None
        self.began = 0.0

    def at(self, event: str) -> None:
        self.calls.append(event)

    def notice_served(self) -> bool:
        assert self.service is not None
        return self.service.tree.get("meta-data/spot/instance-action") is not None

    async def prepare(self, service: Service) -> None:
        self.service = service
        self.at("prepare")

    async def run(self, service: Service) -> int:
        self.at("run")
        self.began = time.monotonic()
        if self.fail_after is not None:
            await asyncio.sleep(self.fail_after)
            self.at("failed")
            return 7
        await self._stopped.wait()
        await asyncio.sleep(self.linger)
        self.at(f"run ends, notice {'on' if self.notice_served() else 'off'}")
        return 0

    def stop(self, signum: int) -> None:
        self.at(f"stop {signal.Signals(signum).name}")
        super().stop(signum)

    def on_signal(self, signum: int) -> None:
        self.at(f"signal {signal.Signals(signum).name}")

    async def close(self) -> None:
        assert self.service is not None
        self.at(f"close, listening {self.service._runner is not None}")


def settings(stop_notice: int) -> Settings:
    return Settings.load({"port": 0, "host": ["127.0.0.1"], "stop_notice": stop_notice}, {})


def start_with(
    gate: asyncio.Event | None = None,
) -> Callable[[Settings], Awaitable[Service]]:
    async def start(s: Settings) -> Service:
        if gate is not None:
            await gate.wait()
        return await Service.start(s, source=fixture_source(fixture_credentials()), control_socket=False)

    return start


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def run(hooks: Recorder, stop_notice: int, **kw: Any) -> asyncio.Task[int]:
    task = asyncio.ensure_future(
        run_service(settings(stop_notice), hooks, start=kw.pop("start", start_with()))
    )
    await asyncio.sleep(0)  # the handlers are installed before run_service's first await
    return task


@pytest.fixture(autouse=True)
def _handlers_are_removed() -> Any:
    yield
    for sig in SIGNALS:  # a leftover handler would swallow the next test's signals
        assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler), sig


async def test_sigterm_stops_the_hooks_while_the_notice_is_served() -> None:
    hooks = Recorder(linger=0.3)
    task = await run(hooks, stop_notice=1)
    await until(lambda: "run" in hooks.calls)
    began = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await task == 0
    took = time.monotonic() - began
    assert hooks.calls == ["prepare", "run", "stop SIGTERM", "run ends, notice on", "close, listening True"]
    assert 0.9 < took < 1.3 + 0.5  # max(notice 1 s, hooks 0.3 s), not their sum


async def test_a_second_signal_cuts_the_notice_short() -> None:
    hooks = Recorder()
    task = await run(hooks, stop_notice=30)
    await until(lambda: "run" in hooks.calls)
    began = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    await until(lambda: any(c.startswith("run ends") for c in hooks.calls))
    os.kill(os.getpid(), signal.SIGINT)
    assert await task == 0
    assert time.monotonic() - began < 5
    assert hooks.calls.count("stop SIGTERM") == 1 and "stop SIGINT" not in hooks.calls


async def test_sigint_stops_at_once_without_the_notice() -> None:
    hooks = Recorder()
    task = await run(hooks, stop_notice=30)
    await until(lambda: "run" in hooks.calls)
    began = time.monotonic()
    os.kill(os.getpid(), signal.SIGINT)
    assert await task == 0
    assert time.monotonic() - began < 2
    assert hooks.calls == ["prepare", "run", "stop SIGINT", "run ends, notice off", "close, listening True"]


async def test_hooks_ending_by_themselves_give_the_code_without_a_notice() -> None:
    hooks = Recorder(fail_after=0.1)
    task = await run(hooks, stop_notice=30)
    assert await task == 7
    assert hooks.calls == ["prepare", "run", "failed", "close, listening True"]
    assert hooks.service is not None and not hooks.notice_served()


async def test_a_signal_during_start_up_cancels_it_and_exits_0() -> None:
    hooks = Recorder()
    gate = asyncio.Event()  # never set: the start hangs, as an unreachable ECS agent makes it
    task = await run(hooks, stop_notice=30, start=start_with(gate))
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 5) == 0
    assert hooks.calls == ["stop SIGTERM"]  # nothing prepared, nothing run, nothing to close


async def test_sighup_reloads_and_is_passed_on_with_the_forwarded_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reloads: list[int] = []

    def reload_config(self: Service) -> bool:
        reloads.append(1)
        return True

    monkeypatch.setattr(Service, "reload_config", reload_config)
    hooks = Recorder()
    task = await run(hooks, stop_notice=0)
    await until(lambda: "run" in hooks.calls)
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGQUIT)
    await until(lambda: "signal SIGQUIT" in hooks.calls)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await task == 0
    assert reloads == [1]
    assert hooks.calls[2:4] == ["signal SIGHUP", "signal SIGQUIT"]
