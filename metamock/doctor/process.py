"""This process and its neighbours: capabilities, PID 1, /dev/log, the agents the sidecar runs."""

from __future__ import annotations

import stat
from pathlib import PurePath

from metamock.doctor.context import DoctorContext
from metamock.doctor.procfs import (
    CAP_NET_ADMIN,
    CAP_SYS_PTRACE,
    cap_eff,
    has_cap,
    processes,
    read_cmdline,
    read_environ,
)
from metamock.doctor.report import Check, passed, skipped, warned

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
    mask = cap_eff(ctx.proc_root)
    if mask is None:
        return skipped("capabilities", "CapEff not readable from /proc/self/status")
    have = [n for n, b in (("NET_ADMIN", CAP_NET_ADMIN), ("SYS_PTRACE", CAP_SYS_PTRACE)) if has_cap(mask, b)]
    missing = [n for n in ("NET_ADMIN", "SYS_PTRACE") if n not in have]
    seen = f"CapEff {mask:016x}: " + (", ".join(have) or "neither NET_ADMIN nor SYS_PTRACE")
    if not missing:
        return passed("capabilities", seen)
    fixes = []
    if "NET_ADMIN" in missing:
        fixes.append(
            "without NET_ADMIN there is no redirect (Fargate never grants it): point clients at "
            "the server with AWS_EC2_METADATA_SERVICE_ENDPOINT; on ECS on EC2 add NET_ADMIN in "
            "linuxParameters.capabilities.add"
        )
    if "SYS_PTRACE" in missing:
        fixes.append(
            "add SYS_PTRACE (linuxParameters.capabilities.add, allowed on Fargate) so the "
            "environment of PID 1 can be re-exported"
        )
    return warned("capabilities", f"{seen}; missing {', '.join(missing)}", "; ".join(fixes))


def check_pid1_environ(ctx: DoctorContext) -> Check:
    try:
        env = read_environ(ctx.proc_root, 1)
    except PermissionError:
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
    if exe == "pause":
        return warned(
            "pid1",
            "PID 1 is the ECS pause process (pidMode task): it does not carry your ECS variables",
            "re-export from an application process: `metamock env export --pid auto`",
        )
    return passed("pid1", f"PID 1 is {exe}")


def check_dev_log(ctx: DoctorContext) -> Check:
    try:
        mode = ctx.dev_log.stat().st_mode
    except OSError:
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
        if not any("metamock" in a for a in argv[:3]) or "sidecar" not in argv:
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
