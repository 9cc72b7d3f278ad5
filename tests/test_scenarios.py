"""Scenario documents and timing, pure: ScenarioBook + ManualClock, no server."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest

from metamock.clock import ManualClock, iso_z, parse_iso
from metamock.errors import SettingsError
from metamock.imds.tree import Tree
from metamock.scenarios import (
    ScenarioBook,
    ScenarioError,
    build,
    event_time,
    render,
    stop_notice_documents,
)
from metamock.settings import ConfigFile
from tests.golden_files import assert_golden

T0 = parse_iso("2026-03-01T12:00:00Z")


def _tree(docs: dict[str, Any]) -> Tree:
    return Tree.build({"meta-data": docs})


def _snapshot(docs: dict[str, Any]) -> str:
    """Every path of the rendered documents with its body, as the server would answer it."""
    tree = _tree(docs)
    return "".join(f"== {path}\n{tree.get(path).body.decode()}\n" for path in tree.paths())  # type: ignore[union-attr]


def _config(text: str) -> ConfigFile:
    return ConfigFile.from_mapping(tomllib.loads(text))


# -- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["terminate", "stop", "hibernate"])
def test_spot_documents_shape(action: str) -> None:
    rendered = render([build("spot", {"action": action}, T0)], T0)
    spot = rendered.documents["spot"]
    assert json.loads(spot["instance-action"]) == {"action": action, "time": "2026-03-01T12:02:00Z"}
    assert spot["termination-time"] == "2026-03-01T12:02:00Z"
    assert_golden(f"scenarios/spot-{action}.txt", _snapshot(rendered.documents))


def test_spot_in_sets_the_notice_time() -> None:
    docs = render([build("spot", {"in": 30}, T0)], T0).documents
    assert json.loads(docs["spot"]["instance-action"])["time"] == iso_z(T0 + 30)


def test_rebalance_shape() -> None:
    docs = render([build("rebalance", {}, T0)], T0 + 5).documents
    assert json.loads(docs["events"]["recommendations"]["rebalance"]) == {"noticeTime": iso_z(T0)}
    assert_golden("scenarios/rebalance.txt", _snapshot(docs))


def test_maintenance_shape_defaults_and_explicit_times() -> None:
    reboot = build("maintenance", {}, T0)
    stop = build(
        "maintenance",
        {
            "code": "instance-stop",
            "state": "completed",
            "not-before": "2026-03-05T01:03:47Z",
            "not-before-deadline": "2026-03-09T01:03:47Z",
            "description": "the host is degraded",
        },
        T0 + 1,
    )
    docs = render([reboot, stop], T0 + 10).documents
    events = json.loads(docs["events"]["maintenance"]["scheduled"])
    assert [e["Code"] for e in events] == ["system-reboot", "instance-stop"]
    assert events[0]["NotBefore"] == "2 Mar 2026 12:00:00 GMT"  # default: a day after it appears
    assert events[0]["NotAfter"] == "2 Mar 2026 14:00:00 GMT"
    assert "NotAfter" not in events[1]  # stop/retirement events have no end
    assert events[1]["NotBeforeDeadline"] == "9 Mar 2026 01:03:47 GMT"
    assert all(e["EventId"].startswith("instance-event-") and len(e["EventId"]) == 32 for e in events)
    assert_golden("scenarios/maintenance.txt", _snapshot(docs))


def test_event_time_format_has_no_leading_zero_and_english_months() -> None:
    assert event_time(parse_iso("2019-01-02T09:00:43Z")) == "2 Jan 2019 09:00:43 GMT"
    assert event_time(parse_iso("2019-12-21T19:17:23Z")) == "21 Dec 2019 19:17:23 GMT"


def test_stop_notice_shape() -> None:
    docs = stop_notice_documents(T0, 10)
    assert json.loads(docs["spot"]["instance-action"]) == {"action": "terminate", "time": iso_z(T0 + 10)}
    assert docs["autoscaling"] == {"target-lifecycle-state": "Terminated"}
    assert_golden("scenarios/stop-notice.txt", _snapshot(docs))


# -- timing ------------------------------------------------------------------------------------


def test_each_scenario_is_absent_until_its_time_and_listed_only_when_it_resolves() -> None:
    clock = ManualClock(T0)
    book = ScenarioBook()
    book.load_config(
        _config(
            """
            [scenarios.spot]
            action = "stop"
            delay = 30
            [scenarios.rebalance]
            delay = 10
            [[scenarios.maintenance]]
            delay = 20
            [scenarios.asg]
            terminate-after = 40
            """
        ).scenarios,
        clock.time(),
    )
    seen: list[tuple[float, list[str], float | None]] = []
    for _ in range(6):
        rendered = book.render(clock.time())
        tree = _tree(rendered.documents)
        listed = [p for p in tree.paths() if p.count("/") > 1 and tree.get(p) and not tree.get(p).is_dir]  # type: ignore[union-attr]
        seen.append((clock.time() - T0, listed, rendered.next_change and rendered.next_change - T0))
        clock.advance(10)
    assert seen == [
        (0, ["meta-data/autoscaling/target-lifecycle-state"], 10),
        (10, ["meta-data/autoscaling/target-lifecycle-state",
              "meta-data/events/recommendations/rebalance"], 20),
        (20, ["meta-data/autoscaling/target-lifecycle-state", "meta-data/events/maintenance/scheduled",
              "meta-data/events/recommendations/rebalance"], 30),
        (30, ["meta-data/autoscaling/target-lifecycle-state", "meta-data/events/maintenance/scheduled",
              "meta-data/events/recommendations/rebalance", "meta-data/spot/instance-action",
              "meta-data/spot/termination-time"], 40),
        (40, ["meta-data/autoscaling/target-lifecycle-state", "meta-data/events/maintenance/scheduled",
              "meta-data/events/recommendations/rebalance", "meta-data/spot/instance-action",
              "meta-data/spot/termination-time"], None),
        (50, ["meta-data/autoscaling/target-lifecycle-state", "meta-data/events/maintenance/scheduled",
              "meta-data/events/recommendations/rebalance", "meta-data/spot/instance-action",
              "meta-data/spot/termination-time"], None),
    ]  # fmt: skip
    states = []
    for offset in (0, 39, 40):
        docs = book.render(T0 + offset).documents
        states.append(docs["autoscaling"]["target-lifecycle-state"])
    assert states == ["InService", "InService", "Terminated"]
    spot = json.loads(book.render(T0 + 31).documents["spot"]["instance-action"])
    assert spot == {"action": "stop", "time": iso_z(T0 + 30 + 120)}  # time = appearance + 120 s


def test_absolute_at_from_toml_datetime_and_text() -> None:
    book = ScenarioBook()
    book.load_config(
        _config(
            """
            [scenarios.spot]
            at = 2026-03-01T12:05:00Z
            [scenarios.rebalance]
            at = "2026-03-01T12:01:00Z"
            """
        ).scenarios,
        T0,
    )
    assert book.render(T0).next_change == T0 + 60
    assert "spot" not in book.render(T0 + 299).documents
    assert "spot" in book.render(T0 + 300).documents


def test_asg_member_without_termination_stays_in_service() -> None:
    book = ScenarioBook()
    book.load_config({"asg": {}}, T0)
    rendered = book.render(T0 + 10**6)
    assert rendered.documents == {"autoscaling": {"target-lifecycle-state": "InService"}}
    assert rendered.next_change is None
    assert book.scenarios()[0].describe()["appears"] is None
    book.trigger(build("asg-terminate", {}, T0 + 10))
    assert book.render(T0 + 10).documents["autoscaling"]["target-lifecycle-state"] == "Terminated"


def test_runtime_trigger_replaces_spot_and_clear_removes_config_ones_until_they_change() -> None:
    book = ScenarioBook()
    book.load_config({"spot": {"action": "terminate"}, "rebalance": {}}, T0)
    book.trigger(build("spot", {"action": "hibernate"}, T0 + 5))
    assert json.loads(book.render(T0 + 5).documents["spot"]["instance-action"])["action"] == "hibernate"
    assert book.clear("spot") == 2
    assert "spot" not in book.render(T0 + 6).documents
    assert "events" in book.render(T0 + 6).documents
    book.load_config({"spot": {"action": "terminate"}, "rebalance": {}}, T0 + 7)  # same: stays cleared
    assert "spot" not in book.render(T0 + 8).documents
    book.load_config({"spot": {"action": "stop"}, "rebalance": {}}, T0 + 9)  # changed: back, from now
    docs = book.render(T0 + 9).documents
    assert json.loads(docs["spot"]["instance-action"]) == {"action": "stop", "time": iso_z(T0 + 9 + 120)}
    assert book.clear() == 2
    assert book.render(T0 + 10).documents == {}


def test_unchanged_config_scenario_keeps_its_start_across_reloads() -> None:
    book = ScenarioBook()
    book.load_config({"rebalance": {"delay": 60}}, T0)
    book.load_config({"rebalance": {"delay": 60}, "spot": {}}, T0 + 50)
    assert book.render(T0 + 50).next_change == T0 + 60  # not T0 + 110
    assert "spot" in book.render(T0 + 50).documents


def test_nothing_scheduled_renders_nothing() -> None:
    rendered = ScenarioBook().render(T0)
    assert rendered.documents == {}
    assert rendered.next_change is None


# -- config schema -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ('[scenarios.spot]\naction = "explode"', "config scenarios.spot.action"),
        ("[scenarios.spot]\ndelay = -1", "config scenarios.spot.delay"),
        ('[scenarios.spot]\ndelay = "soon"', "config scenarios.spot.delay"),
        ("[scenarios.spot]\ndelay = 1\nat = 2026-01-01T00:00:00Z", "config scenarios.spot.at"),
        ('[scenarios.spot]\nat = "tomorrow"', "config scenarios.spot.at"),
        ("[scenarios.spot]\nwhen = 3", "config scenarios.spot.when"),
        ("[scenarios.rebalance]\naction = 'stop'", "config scenarios.rebalance.action"),
        ('[[scenarios.maintenance]]\ncode = "reboot-now"', "config scenarios.maintenance.code"),
        ('[[scenarios.maintenance]]\nstate = "pending"', "config scenarios.maintenance.state"),
        ('[[scenarios.maintenance]]\nnot-after = "x"', "config scenarios.maintenance.not-after"),
        ("[scenarios.asg]\nterminate-after = true", "config scenarios.asg.terminate-after"),
        ("[scenarios.asg]\nterminate = 3", "config scenarios.asg.terminate"),
        ("[scenarios.meteor]\ndelay = 3", "config scenarios.meteor"),
        ("[scenarios]\nspot = 3", "config scenarios.spot"),
    ],
)
def test_bad_scenario_config_names_the_key(toml: str, setting: str) -> None:
    with pytest.raises(SettingsError) as info:
        _config(toml)
    assert info.value.setting == setting
    assert "\n" not in str(info.value)


def test_good_config_is_kept_raw() -> None:
    config = _config(
        """
        [scenarios.spot]
        action = "hibernate"
        in = 30
        delay = 5
        [[scenarios.maintenance]]
        code = "instance-retirement"
        not-before = 3600
        [[scenarios.maintenance]]
        code = "system-maintenance"
        state = "canceled"
        """
    )
    assert config.scenarios["spot"] == {"action": "hibernate", "in": 30, "delay": 5}
    assert len(config.scenarios["maintenance"]) == 2


def test_build_rejects_unknown_options_with_their_name() -> None:
    with pytest.raises(ScenarioError) as info:
        build("spot", {"code": "system-reboot"}, T0)
    assert info.value.key == "code"
