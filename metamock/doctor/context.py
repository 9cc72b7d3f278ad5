"""What every check is given: the environment to judge, where to look, and how long to wait."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from metamock.clock import Clock, SystemClock
from metamock.doctor.report import Check, Redactor
from metamock.settings import DEFAULT_PORT

if TYPE_CHECKING:
    from metamock.doctor.place import Place


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Checks run concurrently, so a run takes about `group` at worst."""

    request: float = 2.0  # one HTTP request (connect + answer)
    command: float = 2.0  # one nft / iptables / ip invocation
    sts: float = 3.0  # connect and read timeout handed to botocore
    group: float = 6.0  # one group of checks, whatever it waits on


@dataclass(frozen=True)
class DoctorContext:
    """Inputs of a doctor run. Nothing in the checks reads os.environ; they read `environ`."""

    environ: Mapping[str, str]
    port: int = DEFAULT_PORT
    offline: bool = False
    proc_root: Path = Path("/proc")
    dev_log: Path = Path("/dev/log")
    timeouts: Timeouts = field(default_factory=Timeouts)
    clock: Clock = field(default_factory=SystemClock)
    redactor: Redactor = field(default_factory=Redactor)
    place: Place | None = None  # where doctor runs; the runner fills it in once (place.where)


class CheckFailed(Exception):  # a result, not a program error
    """Raised inside a group to end it with this check's result."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.name)
        self.check = check
