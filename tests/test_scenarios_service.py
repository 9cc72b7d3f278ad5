"""Scenarios in a running service, over real sockets: timing, listings, the stop notice, no TCP control."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiohttp

from metamock.clock import ManualClock, iso_z, parse_iso
from metamock.scenarios import build
from tests.golden_files import assert_golden
from tests.scenarios_support import fetch
from tests.servers import running_service

T0 = parse_iso("2026-03-01T12:00:00Z")
CONFIG = """
[scenarios.spot]
action = "terminate"
delay = 30
[scenarios.asg]
terminate-after = 60
"""


async def test_config_scenarios_follow_the_injected_clock(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    async with (
        running_service(tmp_path, config=CONFIG, clock=clock) as service,
        aiohttp.ClientSession() as s,
    ):
        assert (await fetch(s, service.port, "meta-data/spot/instance-action"))[0] == 404
        listing = (await fetch(s, service.port, "meta-data/"))[1].split("\n")
        assert "spot/" not in listing
        assert "autoscaling/" in listing
        assert await fetch(s, service.port, "meta-data/autoscaling/target-lifecycle-state") == (
            200,
            "InService",
        )
        assert service.next_scenario_change == T0 + 30

        clock.advance(30)
        service.rebuild()  # what the timer does at T0 + 30 (a ManualClock does not drive the loop)
        assert "spot/" in (await fetch(s, service.port, "meta-data/"))[1].split("\n")
        status, body = await fetch(s, service.port, "meta-data/spot/instance-action")
        assert (status, json.loads(body)) == (200, {"action": "terminate", "time": iso_z(T0 + 150)})
        assert await fetch(s, service.port, "meta-data/spot/termination-time") == (200, iso_z(T0 + 150))
        assert await fetch(s, service.port, "meta-data/spot/") == (200, "instance-action\ntermination-time")
        assert service.next_scenario_change == T0 + 60

        clock.advance(30)
        service.rebuild()
        assert await fetch(s, service.port, "meta-data/autoscaling/target-lifecycle-state") == (
            200,
            "Terminated",
        )
        assert service.next_scenario_change is None


async def test_a_later_scenario_appears_by_itself_without_any_request(tmp_path: Path) -> None:
    config = "[scenarios.rebalance]\ndelay = 0.3\n[[scenarios.maintenance]]\ndelay = 0.5\n"
    async with running_service(tmp_path, config=config) as service:
        assert service.tree.get("meta-data/events") is None
        await asyncio.sleep(0.45)
        assert service.tree.get("meta-data/events/recommendations/rebalance") is not None
        assert service.tree.get("meta-data/events/maintenance/scheduled") is None
        assert service.tree.get("meta-data/events").body == b"recommendations/"  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
        assert service.tree.get("meta-data/events").body == b"maintenance/\nrecommendations/"  # type: ignore[union-attr]


async def test_triggered_scenario_on_the_wire(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    async with running_service(tmp_path, clock=clock) as service, aiohttp.ClientSession() as s:
        service.trigger_scenario(build("spot", {"action": "stop", "in": 90}, clock.time()))
        service.trigger_scenario(build("rebalance", {}, clock.time()))
        service.trigger_scenario(build("maintenance", {"code": "instance-reboot"}, clock.time()))
        service.trigger_scenario(build("asg-terminate", {}, clock.time()))
        lines = []
        for path in (
            "meta-data/spot/instance-action",
            "meta-data/spot/termination-time",
            "meta-data/events/recommendations/rebalance",
            "meta-data/events/maintenance/scheduled",
            "meta-data/autoscaling/target-lifecycle-state",
            "meta-data/events/",
        ):
            async with s.get(f"http://127.0.0.1:{service.port}/latest/{path}") as resp:
                lines.append(
                    f"GET {path} -> {resp.status} {resp.headers['Content-Type']}\n{await resp.text()}\n"
                )
        assert_golden("scenarios/wire.txt", "".join(lines))
        assert service.clear_scenarios() == 4
        assert (await fetch(s, service.port, "meta-data/spot/instance-action"))[0] == 404
        assert "spot/" not in (await fetch(s, service.port, "meta-data/"))[1]


async def test_stop_notice_wins_over_a_scenario_and_keeps_the_rest(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    async with running_service(tmp_path, clock=clock, stop_notice="5") as service:
        service.trigger_scenario(build("spot", {"action": "hibernate"}, clock.time()))
        service.trigger_scenario(build("rebalance", {}, clock.time()))
        task = asyncio.ensure_future(service.publish_stop_notice())
        await asyncio.sleep(0)
        action = json.loads(service.tree.get("meta-data/spot/instance-action").body)  # type: ignore[union-attr]
        assert action == {"action": "terminate", "time": iso_z(T0 + 5)}
        assert service.tree.get("meta-data/autoscaling/target-lifecycle-state").body == b"Terminated"  # type: ignore[union-attr]
        assert service.tree.get("meta-data/events/recommendations/rebalance") is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_nothing_reachable_over_tcp_changes_state(tmp_path: Path) -> None:
    async with running_service(tmp_path) as service, aiohttp.ClientSession() as s:
        before = service.tree
        base = f"http://127.0.0.1:{service.port}"
        answers = set()
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in (
                "/control",
                "/latest/meta-data/spot/instance-action",
                "/trigger",
                "/latest/api/token/x",
            ):
                body = json.dumps({"op": "trigger", "scenario": "spot"})
                async with s.request(method, base + path, data=body) as resp:
                    answers.add(resp.status)
        assert answers <= {403, 404, 405}
        assert service.tree is before
        assert service.scenario_status() == []
