"""EC2 life-cycle scenarios: what is scheduled, and the meta-data documents it renders at a time.

Pure: no I/O, no clock. `ScenarioBook.render(now)` returns the documents visible at `now` and the
next moment that answer changes; the service builds the tree from them and rebuilds at that moment,
so a notice appears by itself, and is listed exactly when it resolves.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from metamock.clock import iso_z, parse_iso

KINDS = ("spot", "rebalance", "maintenance", "asg-terminate")
ACTIONS = ("terminate", "stop", "hibernate")
EVENT_CODES = (
    "instance-reboot", "system-reboot", "system-maintenance", "instance-retirement", "instance-stop",
)  # fmt: skip
EVENT_STATES = ("active", "completed", "canceled")
NOTICE_SECONDS = 120.0  # EC2's two-minute warning
_DESCRIPTIONS = {
    "instance-reboot": "scheduled reboot",
    "system-reboot": "scheduled reboot",
    "system-maintenance": "scheduled maintenance",
    "instance-retirement": "scheduled retirement",
    "instance-stop": "scheduled stop",
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
DAY = 86400.0


@dataclass(frozen=True)
class Moment:
    """A time given either absolutely (epoch seconds) or as seconds after the scenario appears."""

    value: float
    absolute: bool = False

    def resolve(self, appears: float) -> float:
        return self.value if self.absolute else appears + self.value


@dataclass(frozen=True)
class Scenario:
    """One scheduled scenario. `appears` is when its documents become visible (epoch seconds)."""

    kind: str
    appears: float
    action: str = "terminate"  # spot
    notice: float = NOTICE_SECONDS  # spot: seconds from the notice to its `time`
    code: str = "system-reboot"  # maintenance
    state: str = "active"
    description: str | None = None
    not_before: Moment = Moment(DAY)
    not_after: Moment | None = None
    deadline: Moment | None = None
    origin: str = "trigger"  # "trigger" (control socket) or "config"
    member_since: float | None = None  # asg: InService from here until `appears`

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary, for `metamock trigger --status` and logs."""
        appears = iso_z(self.appears) if math.isfinite(self.appears) else None
        out: dict[str, Any] = {"kind": self.kind, "origin": self.origin, "appears": appears}
        if self.kind == "spot":
            out |= {"action": self.action, "time": iso_z(self.appears + self.notice)}
        elif self.kind == "maintenance":
            out |= {"code": self.code, "state": self.state}
        return out


@dataclass(frozen=True)
class Rendered:
    documents: dict[str, Any]  # merged into meta-data/
    next_change: float | None  # epoch seconds when `documents` next differ; None = never


@dataclass
class ScenarioBook:
    """The scenarios of one running service: those from the config file and those triggered."""

    _config: list[Scenario] = field(default_factory=list)
    _config_raw: dict[str, tuple[Any, float]] = field(default_factory=dict)  # key -> (table, anchor)
    _cleared: dict[str, Any] = field(default_factory=dict)  # config keys cleared, by their table
    _triggered: list[Scenario] = field(default_factory=list)

    def load_config(self, table: Mapping[str, Any], now: float) -> None:
        """Take the config's `[scenarios]`; an unchanged entry keeps its start time across reloads."""
        anchors: dict[str, tuple[Any, float]] = {}
        scenarios: list[Scenario] = []
        for key, raw in table.items():
            previous = self._config_raw.get(key)
            anchor = previous[1] if previous is not None and previous[0] == raw else now
            anchors[key] = (raw, anchor)
            if key in self._cleared and self._cleared[key] == raw:
                continue
            scenarios.extend(from_config(key, raw, anchor))
        self._cleared = {k: v for k, v in self._cleared.items() if anchors.get(k, (None,))[0] == v}
        self._config_raw, self._config = anchors, scenarios

    def trigger(self, scenario: Scenario) -> None:
        """Add a run-time scenario; a new spot notice or rebalance replaces an earlier one."""
        if scenario.kind in ("spot", "rebalance"):
            self._triggered = [s for s in self._triggered if s.kind != scenario.kind]
        self._triggered.append(scenario)

    def clear(self, kind: str | None = None) -> int:
        """Remove scenarios (all, or of one kind), those from the config too; returns how many."""
        before = len(self._config) + len(self._triggered)
        keep = (lambda s: s.kind != kind) if kind else (lambda s: False)
        for key, (raw, _) in self._config_raw.items():
            if any(_config_kind(key) == s.kind and not keep(s) for s in self._config):
                self._cleared[key] = raw
        self._config = [s for s in self._config if keep(s)]
        self._triggered = [s for s in self._triggered if keep(s)]
        return before - len(self._config) - len(self._triggered)

    def scenarios(self) -> list[Scenario]:
        return sorted([*self._config, *self._triggered], key=lambda s: s.appears)

    def render(self, now: float) -> Rendered:
        return render(self.scenarios(), now)


def _config_kind(key: str) -> str:
    return "asg-terminate" if key == "asg" else key


def render(scenarios: Iterable[Scenario], now: float) -> Rendered:
    """The meta-data documents visible at `now`, and when that answer next changes."""
    docs: dict[str, Any] = {}
    scenarios = list(scenarios)
    moments = [t for s in scenarios for t in (s.appears, s.member_since) if t is not None]
    pending = [t for t in moments if now < t < math.inf]
    visible = sorted((s for s in scenarios if s.appears <= now), key=lambda s: s.appears)
    spot = [s for s in visible if s.kind == "spot"]
    if spot:
        docs["spot"] = spot_documents(spot[-1].action, spot[-1].appears + spot[-1].notice)
    rebalance = [s for s in visible if s.kind == "rebalance"]
    if rebalance:
        docs["events"] = {"recommendations": {"rebalance": rebalance_document(rebalance[-1].appears)}}
    events = [s for s in visible if s.kind == "maintenance"]
    if events:
        scheduled = json.dumps([maintenance_event(s) for s in events], indent=2)
        docs.setdefault("events", {})["maintenance"] = {"scheduled": scheduled}
    asg = [s for s in scenarios if s.kind == "asg-terminate"]
    if any(s.appears <= now for s in asg):
        docs["autoscaling"] = {"target-lifecycle-state": "Terminated"}
    elif any(s.member_since is not None and s.member_since <= now for s in asg):
        docs["autoscaling"] = {"target-lifecycle-state": "InService"}
    return Rendered(docs, min(pending) if pending else None)


def spot_documents(action: str, when: float) -> dict[str, str]:
    """`spot/instance-action` and `spot/termination-time` (the time EC2 acts), as EC2 words them."""
    return {
        "instance-action": json.dumps({"action": action, "time": iso_z(when)}),
        "termination-time": iso_z(when),
    }


def rebalance_document(notice_time: float) -> str:
    return json.dumps({"noticeTime": iso_z(notice_time)})


def stop_notice_documents(now: float, grace: float) -> dict[str, Any]:
    """What SIGTERM publishes: spot terminate at now + grace, and the ASG target state Terminated."""
    return {
        "spot": spot_documents("terminate", now + grace),
        "autoscaling": {"target-lifecycle-state": "Terminated"},
    }


def maintenance_event(s: Scenario) -> dict[str, str]:
    """One entry of `events/maintenance/scheduled` (field names and time format as EC2's)."""
    event = {
        "Code": s.code,
        "Description": s.description or _DESCRIPTIONS[s.code],
        "State": s.state,
        "EventId": event_id(s),
        "NotBefore": event_time(s.not_before.resolve(s.appears)),
    }
    if s.not_after is not None:
        event["NotAfter"] = event_time(s.not_after.resolve(s.appears))
    if s.deadline is not None:
        event["NotBeforeDeadline"] = event_time(s.deadline.resolve(s.appears))
    return event


def event_id(s: Scenario) -> str:
    """`instance-event-` + 17 hex digits, stable for the same event."""
    seed = f"{s.code}\0{s.appears}\0{s.not_before}"
    return "instance-event-" + hashlib.sha256(seed.encode()).hexdigest()[:17]


def event_time(ts: float) -> str:
    """`2 Jan 2006 15:04:05 GMT`, the scheduled-events time format (no leading zero on the day)."""
    t = datetime.fromtimestamp(int(ts), UTC)
    return f"{t.day} {_MONTHS[t.month - 1]} {t.year} {t:%H:%M:%S} GMT"


# -- building scenarios from the config file and from control requests ---------------------------


class ScenarioError(ValueError):
    """A bad scenario option; `key` names it (e.g. `delay`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def from_config(key: str, raw: Any, anchor: float) -> list[Scenario]:
    """The scenarios of one `[scenarios.<key>]` entry; `anchor` is when the config was loaded."""
    if key == "maintenance":
        tables = raw if isinstance(raw, list) else [raw]
        return [build("maintenance", _as_table(t), anchor, origin="config") for t in tables]
    if key == "asg":
        table = dict(_as_table(raw))
        _only(table, {"terminate-after", "terminate-at"})
        when = {"delay": table.get("terminate-after"), "at": table.get("terminate-at")}
        try:
            start = build("asg-terminate", {k: v for k, v in when.items() if v is not None}, anchor, "config")
        except ScenarioError as exc:
            names = {"delay": "terminate-after", "at": "terminate-at"}
            raise ScenarioError(names.get(exc.key, exc.key), str(exc)) from None
        if "terminate-after" not in table and "terminate-at" not in table:
            start = replace(start, appears=math.inf)  # InService only, never Terminated by itself
        return [replace(start, member_since=anchor)]
    if key in ("spot", "rebalance"):
        return [build(key, _as_table(raw), anchor, origin="config")]
    raise ScenarioError("", f"unknown scenario {key!r}; expected spot, rebalance, maintenance or asg")


def build(kind: str, options: Mapping[str, Any], now: float, origin: str = "trigger") -> Scenario:
    """A scenario of `kind` from options (`delay`/`at`, and the kind's own); ScenarioError if bad."""
    allowed = {"delay", "at"} | {
        "spot": {"action", "in"},
        "rebalance": set(),
        "maintenance": {"code", "state", "description", "not-before", "not-after", "not-before-deadline"},
        "asg-terminate": set(),
    }[kind]
    _only(options, allowed)
    if options.get("delay") is not None and options.get("at") is not None:
        raise ScenarioError("at", "give either delay or at, not both")
    appears = now
    if options.get("at") is not None:
        appears = _moment("at", options["at"], absolute_only=True).value
    elif options.get("delay") is not None:
        appears = now + _seconds("delay", options["delay"])
    scenario = Scenario(kind=kind, appears=appears, origin=origin)
    if kind == "spot":
        action = options.get("action", "terminate")
        if action not in ACTIONS:
            raise ScenarioError("action", f"{action!r}: expected one of {', '.join(ACTIONS)}")
        notice = _seconds("in", options.get("in", NOTICE_SECONDS))
        return replace(scenario, action=action, notice=notice)
    if kind == "maintenance":
        code, state = options.get("code", "system-reboot"), options.get("state", "active")
        if code not in EVENT_CODES:
            raise ScenarioError("code", f"{code!r}: expected one of {', '.join(EVENT_CODES)}")
        if state not in EVENT_STATES:
            raise ScenarioError("state", f"{state!r}: expected one of {', '.join(EVENT_STATES)}")
        description = options.get("description")
        if description is not None and not isinstance(description, str):
            raise ScenarioError("description", "must be a string")
        not_before = _moment("not-before", options.get("not-before", DAY))
        default_after = None if code in ("instance-retirement", "instance-stop") else 2 * 3600.0
        after_raw = options.get("not-after")
        not_after = _moment("not-after", after_raw) if after_raw is not None else None
        if not_after is None and default_after is not None:
            not_after = replace(not_before, value=not_before.value + default_after)
        deadline_raw = options.get("not-before-deadline")
        deadline = _moment("not-before-deadline", deadline_raw) if deadline_raw is not None else None
        return replace(
            scenario, code=code, state=state, description=description,
            not_before=not_before, not_after=not_after, deadline=deadline,
        )  # fmt: skip
    if kind == "asg-terminate":  # a member of the group (InService) from now until then
        return replace(scenario, member_since=now)
    return scenario


def _as_table(raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ScenarioError("", "must be a table")
    return raw


def _only(options: Mapping[str, Any], allowed: set[str]) -> None:
    for key in options:
        if key not in allowed:
            raise ScenarioError(key, f"unknown option; expected one of {', '.join(sorted(allowed))}")


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 366 * DAY:
        raise ScenarioError(key, f"{value!r}: expected seconds, 0..{int(366 * DAY)}")
    return float(value)


def _moment(key: str, value: Any, absolute_only: bool = False) -> Moment:
    """Seconds after the scenario appears (a number), or a time (RFC 3339 text or TOML datetime)."""
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return Moment(stamp.timestamp(), absolute=True)
    if isinstance(value, str):
        try:
            return Moment(parse_iso(value), absolute=True)
        except ValueError:
            raise ScenarioError(key, f"{value!r}: expected a time like 2026-01-07T01:03:47Z") from None
    if absolute_only:
        raise ScenarioError(key, f"{value!r}: expected a time like 2026-01-07T01:03:47Z")
    return Moment(_seconds(key, value))


def validate_config(table: Mapping[str, Any]) -> None:
    """Check a config `[scenarios]` table; ScenarioError.key is `<scenario>.<option>`."""
    for key, raw in table.items():
        try:
            from_config(key, raw, 0.0)
        except ScenarioError as exc:
            raise ScenarioError(f"{key}.{exc.key}" if exc.key else key, str(exc)) from None
