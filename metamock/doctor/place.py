"""Where doctor runs: in metamock's own container, in an application container of a task, or
on a laptop. Checks judge what applies there and word their fixes for it: the endpoint variable
is missing from the sidecar itself by design, a laptop has nothing to re-export, and Fargate
never grants NET_ADMIN."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePath

from metamock.doctor.context import DoctorContext
from metamock.doctor.environment import on_ecs
from metamock.doctor.procfs import pid1_environ, processes


class Kind(StrEnum):
    SIDECAR = "sidecar"  # metamock's own container: `metamock sidecar` (or `serve`) runs here
    TASK = "task"  # an application container of an ECS task (or an EKS pod)
    LOCAL = "local"  # neither: a laptop, a CI runner, a plain container


@dataclass(frozen=True)
class Place:
    kind: Kind
    why: str  # what showed it, for the detail of a check
    fargate: bool = False  # Fargate grants no NET_ADMIN, whatever the task definition says
    command: str | None = None  # SIDECAR: `sidecar` (starts agents) or `serve`

    @property
    def sidecar(self) -> bool:
        return self.kind is Kind.SIDECAR


def metamock_command(argv: Sequence[str]) -> str | None:
    """`sidecar` or `serve` when `argv` runs that metamock command (a script, `-m`, a venv)."""
    names = [PurePath(a).name for a in argv[:3]]
    if "metamock" not in names:
        return None
    rest = [a for a in argv[names.index("metamock") + 1 :] if not a.startswith("-")]
    return rest[0] if rest and rest[0] in ("sidecar", "serve") else None


def _mount_ns(proc_root: Path, pid: int | str) -> str | None:
    try:
        return str((proc_root / str(pid) / "ns" / "mnt").readlink())
    except OSError:
        return None


def _server_here(ctx: DoctorContext) -> tuple[int, str] | None:
    """(pid, command) of a metamock sidecar/server in this container, PID 1 first.

    "This container" is this mount namespace: with a shared PID namespace (`pidMode: task`,
    `docker run --pid container:...`) an application container sees the sidecar's processes
    too and must not take itself for the sidecar. Where the namespaces cannot be compared (no
    ptrace access to the process), PID 1 still counts: it is this container's entrypoint.
    """
    ours = _mount_ns(ctx.proc_root, "self")
    found: list[tuple[int, str]] = []
    for pid, argv in processes(ctx.proc_root):
        command = metamock_command(argv)
        if command is None:
            continue
        theirs = _mount_ns(ctx.proc_root, pid)
        same = theirs == ours if theirs is not None and ours is not None else pid == 1
        if same:
            found.append((pid, command))
    return min(found, default=None)


def _on_aws(environ: Mapping[str, str]) -> bool:
    """ECS (the platform check's own test), or container credentials (an EKS pod too)."""
    return on_ecs(environ) or bool(
        environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        or environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    )


def place_of(ctx: DoctorContext) -> Place:
    """Judged from this process's environment, PID 1's, and the processes of this container."""
    pid1: Mapping[str, str] = pid1_environ(ctx.proc_root) or {}
    execution = ctx.environ.get("AWS_EXECUTION_ENV") or pid1.get("AWS_EXECUTION_ENV", "")
    fargate = execution == "AWS_ECS_FARGATE"
    on_aws = _on_aws(ctx.environ) or _on_aws(pid1)
    server = _server_here(ctx)
    # `metamock serve` on a laptop is just the laptop; in a task it is metamock's container.
    if server is not None and (server[1] == "sidecar" or on_aws):
        pid, command = server
        who = "PID 1" if pid == 1 else f"pid {pid}"
        return Place(Kind.SIDECAR, f"{who} is `metamock {command}`", fargate, command)
    if on_aws:
        return Place(Kind.TASK, "the ECS/EKS variables", fargate)
    return Place(Kind.LOCAL, "no ECS or EKS variables here or in PID 1")


def where(ctx: DoctorContext) -> Place:
    """The run's place (computed once by the runner), or judged now for a lone check."""
    return ctx.place or place_of(ctx)
