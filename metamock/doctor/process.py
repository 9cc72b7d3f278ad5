"""This process and its neighbours: capabilities, PID 1, /dev/log, the agents the sidecar runs."""

from __future__ import annotations

import stat
from pathlib import PurePath

from metamock.doctor.context import DoctorContext
from metamock.doctor.place import Kind, metamock_command, where
from metamock.doctor.procfs import pid1_environ, processes, read_cmdline, read_environ
from metamock.doctor.report import Check, passed, skipped, warned
from metamock.endpoint import endpoint_advice
from metamock.netfilter.privilege import (
    CAP_NET_ADMIN,
    CAP_SYS_PTRACE,
    effective_capabilities,
    has_capability,
)

NAMES = ("capabilities", "pid1-environ", "pid1", "dev-log", "agents")
# `--agent NAME` -> the long-running process (the CloudWatch preset starts through a wrapper).
AGENT_PROCESSES = {"ssm": "amazon-ssm-agent", "cloudwatch": "amazon-cloudwatch-agent"}


def agent_process_names(agent: str) -> set[str]:
    """Process names that count as `agent` running: its daemon or the preset's entry point."""
    from metamock.agents import PRESETS  # only when a sidecar runs agents

    names = {AGENT_PROCESSES.get(agent, agent)}
    if agent in PRESETS:
        names.add(PurePath(PRESETS[agent].argv[0]).name)
    return names


def check_capabilities(ctx: DoctorContext) -> Check:
    """Warn only about a capability this place needs and lacks: NET_ADMIN where the redirect is
    set up (metamock's own container, not on Fargate, which never grants it); SYS_PTRACE where
    PID 1's environment is needed (on ECS) and cannot be read without it."""
    mask = effective_capabilities(ctx.proc_root / "self" / "status")
    if mask is None:
        return skipped("capabilities", "CapEff not readable from /proc/self/status")
    place = where(ctx)
    have = [
        n
        for n, b in (("NET_ADMIN", CAP_NET_ADMIN), ("SYS_PTRACE", CAP_SYS_PTRACE))
        if has_capability(mask, b)
    ]
    seen = f"CapEff {mask:016x}: " + (", ".join(have) or "neither NET_ADMIN nor SYS_PTRACE")
    notes: list[str] = []
    lacking: list[str] = []  # needed here and missing
    fixes: list[str] = []
    if "NET_ADMIN" not in have:
        if place.fargate:
            notes.append("no NET_ADMIN: Fargate never grants it, clients use the endpoint variable")
        elif place.kind is not Kind.SIDECAR:
            notes.append("no NET_ADMIN: not needed here (the redirect is set up where metamock runs)")
        else:
            lacking.append("NET_ADMIN")
            fixes.append(
                "without NET_ADMIN the sidecar cannot redirect 169.254.169.254 (clients with the "
                "address built in miss it): add NET_ADMIN in this container's "
                "linuxParameters.capabilities.add, or rely on "
                f"{endpoint_advice(ctx.port)} in every client"
            )
    if "SYS_PTRACE" not in have:
        if place.kind is Kind.LOCAL:
            notes.append("no SYS_PTRACE: not needed off ECS (nothing to re-export)")
        elif pid1_environ(ctx.proc_root) is not None:
            notes.append("no SYS_PTRACE: not needed, PID 1's environment is readable")
        else:
            lacking.append("SYS_PTRACE")
            fixes.append(
                "PID 1's environment is unreadable: add SYS_PTRACE (linuxParameters.capabilities.add, "
                "allowed on Fargate) or run as PID 1's user, so `metamock env export` can re-export it"
            )
    if not lacking:
        return passed("capabilities", "; ".join([seen, *notes]))
    return warned(
        "capabilities", "; ".join([seen, *notes, f"missing {', '.join(lacking)}"]), "; ".join(fixes)
    )


def check_pid1_environ(ctx: DoctorContext) -> Check:
    try:
        env = read_environ(ctx.proc_root, 1)
    except PermissionError:
        if where(ctx).kind is Kind.LOCAL:
            return skipped(
                "pid1-environ", "/proc/1/environ: permission denied (off ECS nothing to re-export)"
            )
        return warned(
            "pid1-environ",
            "/proc/1/environ: permission denied",
            "run as PID 1's user or add SYS_PTRACE, else `metamock env export` cannot re-export "
            "the ECS variables",
        )
    except OSError as exc:
        return warned("pid1-environ", f"/proc/1/environ: {exc.strerror or exc}", "mount /proc")
    ecs = sorted(n for n in env if n.startswith(("ECS_", "AWS_CONTAINER_", "AWS_EXECUTION_ENV")))
    return passed("pid1-environ", f"readable, {len(env)} variables ({len(ecs)} ECS)")


def check_pid1(ctx: DoctorContext) -> Check:
    try:
        argv = read_cmdline(ctx.proc_root, 1)
    except OSError as exc:
        return skipped("pid1", f"/proc/1/cmdline: {exc.strerror or exc}")
    exe = PurePath(argv[0]).name if argv else "?"
    command = metamock_command(argv)
    if command is not None:
        exe = f"`metamock {command}`"
    if exe == "pause":
        return warned(
            "pid1",
            "PID 1 is the ECS pause process (pidMode task): it does not carry your ECS variables",
            "re-export from an application process: `metamock env export --pid auto`",
        )
    return passed("pid1", f"PID 1 is {exe}")


def _sidecar_without_programs(ctx: DoctorContext) -> bool:
    """Doctor runs in the sidecar's container, and that sidecar starts no --agent / --run."""
    if where(ctx).command != "sidecar":
        return False
    for _, argv in processes(ctx.proc_root):
        if metamock_command(argv) == "sidecar" and any(
            a in ("--agent", "--run") or a.startswith(("--agent=", "--run=")) for a in argv
        ):
            return False
    return True


def check_dev_log(ctx: DoctorContext) -> Check:
    try:
        mode = ctx.dev_log.stat().st_mode
    except OSError:
        if _sidecar_without_programs(ctx):
            return skipped(
                "dev-log", f"{ctx.dev_log} is missing; the sidecar runs no agents that could log there"
            )
        return warned(
            "dev-log",
            f"{ctx.dev_log} is missing",
            "agents that log to syslog lose those lines: configure them to log to stdout/a file, "
            "or run a syslog daemon that creates /dev/log",
        )
    if not stat.S_ISSOCK(mode):
        return warned(
            "dev-log", f"{ctx.dev_log} exists but is not a socket", "remove it and start a syslog daemon"
        )
    return passed("dev-log", f"{ctx.dev_log} is a socket")


def expected_agents(ctx: DoctorContext) -> set[str]:
    """Agents some `metamock sidecar --agent NAME` process here says it runs.

    Kept simple on purpose: the sidecar's command line is the record of what it runs.
    """
    wanted: set[str] = set()
    for _, argv in processes(ctx.proc_root):
        if metamock_command(argv) != "sidecar":
            continue
        for i, arg in enumerate(argv):
            if arg == "--agent" and i + 1 < len(argv):
                wanted.add(argv[i + 1])
            elif arg.startswith("--agent="):
                wanted.add(arg.split("=", 1)[1])
    return wanted


def check_agents(ctx: DoctorContext) -> Check:
    wanted = expected_agents(ctx)
    if not wanted:
        return skipped("agents", "no `metamock sidecar --agent` process here")
    # argv[1] too: a script started through its #! line shows the interpreter as argv[0].
    running = {PurePath(a).name for _, argv in processes(ctx.proc_root) for a in argv[:2]}
    missing = sorted(a for a in wanted if not agent_process_names(a) & running)
    shown = ", ".join(sorted(wanted))
    if missing:
        return warned(
            "agents",
            f"sidecar runs {shown}; not running now: {', '.join(missing)}",
            "see the sidecar's log for the agent's exit and restart back-off",
        )
    return passed("agents", f"sidecar runs {shown}: all running")


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    out.append(check_capabilities(ctx))
    out.append(check_pid1_environ(ctx))
    out.append(check_pid1(ctx))
    out.append(check_dev_log(ctx))
    out.append(check_agents(ctx))
