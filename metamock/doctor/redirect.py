"""How EC2 clients reach the server: netfilter redirect + route, or the endpoint variable."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from metamock.doctor.context import DoctorContext
from metamock.doctor.place import Kind, Place, where
from metamock.doctor.procfs import pid1_environ
from metamock.doctor.report import Check, failed, passed, skipped, warned
from metamock.endpoint import ENDPOINT_VAR, endpoint_advice
from metamock.errors import MetamockError
from metamock.netfilter.privilege import has_net_admin
from metamock.threads import in_daemon_thread

NAMES = ("redirect", "route", "endpoint-env")
IMDS_V4 = "169.254.169.254"
_PORT_PATTERNS = (
    re.compile(r"redirect to :(\d+)"),
    re.compile(r"dnat (?:ip )?to 127\.0\.0\.1:(\d+)"),
    re.compile(r"--to-ports (\d+)"),
    re.compile(r"--to-destination 127\.0\.0\.1:(\d+)"),
)


@dataclass(frozen=True)
class Rules:
    """What redirect rules are in place: the backend holding them and the ports they point at."""

    backend: str | None
    ports: frozenset[int] = frozenset()
    note: str = ""
    problems: tuple[str, ...] = ()  # what `netfilter status` found missing or wrong
    probe: str = ""  # its connection through the redirect: "connection verified: ..." / "... fails: ..."
    working: bool = True


async def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """(exit code, stdout+stderr). A missing binary is exit 127; a hang is killed, exit 124."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not installed"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return 124, f"{argv[0]}: no answer within {timeout:g} s"
    return proc.returncode or 0, out.decode("utf-8", "replace")


def ports_in(text: str) -> frozenset[int]:
    return frozenset(int(m) for pattern in _PORT_PATTERNS for m in pattern.findall(text))


async def read_rules(ctx: DoctorContext) -> Rules:
    """What `metamock netfilter status` sees (live rules, routes, probe); ports from its record,
    else from the live listing."""
    from metamock import netfilter  # only needed with CAP_NET_ADMIN

    try:
        status = await in_daemon_thread(lambda: netfilter.status(environ=ctx.environ))
    except MetamockError as exc:
        return Rules(None, note=str(exc))
    if not status.applied:
        return Rules(None, note=status.note)
    ports = frozenset({status.port}) if status.port else ports_in(status.rules)
    return Rules(
        status.backend or "?",
        ports,
        note=status.note,
        problems=status.problems,
        probe=status.probe,
        working=status.working,
    )


def check_rules(ctx: DoctorContext, rules: Rules) -> Check:
    if rules.backend is None:
        return warned(
            "redirect",
            f"no redirect rules for {IMDS_V4}:80" + (f" ({rules.note})" if rules.note else ""),
            "clients with the address built in (ec2-metadata, curl scripts) miss the server: run "
            f"`metamock netfilter apply --port {ctx.port}` (or `metamock serve --netfilter`)",
        )
    shown = ", ".join(f":{p}" for p in sorted(rules.ports)) or "an unknown port"
    if rules.problems:
        return failed(
            "redirect",
            f"{rules.backend} redirect incomplete: " + "; ".join(rules.problems),
            f"`metamock netfilter apply --port {ctx.port}` puts it back (`serve --netfilter` and "
            "`sidecar` do by themselves within seconds; if this repeats, something keeps removing it)",
        )
    if rules.ports != {ctx.port}:
        return failed(
            "redirect",
            f"{rules.backend} rules send {IMDS_V4}:80 to {shown}, the server is on :{ctx.port}",
            f"`metamock netfilter remove` then `metamock netfilter apply --port {ctx.port}`",
        )
    if not rules.working:
        return failed(
            "redirect",
            f"{rules.backend} rules send {IMDS_V4}:80 to {shown}, but {rules.probe}",
            f"start the server on :{ctx.port} (`metamock serve`), or find what else answers there",
        )
    return passed("redirect", f"{rules.backend} rules send {IMDS_V4}:80 to {shown}")


async def check_route(ctx: DoctorContext) -> Check:
    rc, text = await run_command(["ip", "-o", "route", "get", IMDS_V4], ctx.timeouts.command)
    fix = f"`ip route add {IMDS_V4}/32 dev lo src 127.0.0.1` (`metamock netfilter apply` adds it)"
    if rc != 0:
        return failed("route", f"no route to {IMDS_V4}: {text.strip()}", fix)
    line = " ".join(text.split()).replace(" \\", "")
    dev = re.search(r"\bdev (\S+)", line)
    src = re.search(r"\bsrc (\S+)", line)
    seen = f"{IMDS_V4} via dev {dev.group(1) if dev else '?'} src {src.group(1) if src else '(none)'}"
    if dev and dev.group(1) == "lo" and not src:
        return failed("route", seen + ": replies would never arrive", fix)
    return passed("route", seen)


def _endpoint_ok(value: str, port: int) -> bool:
    parts = urlsplit(value)
    try:
        value_port = parts.port or 80
    except ValueError:
        return False
    return parts.hostname in {"127.0.0.1", "localhost", "::1"} and value_port == port


def _missing_endpoint_fix(place: Place, port: int) -> str:
    """How clients here get the endpoint, worded for where doctor runs."""
    advice = endpoint_advice(port)
    if place.kind is Kind.LOCAL:
        return (
            f"`export {advice}` in the shell (or the service's environment) that runs the clients, "
            "or run them in a namespace with the redirect (`metamock netfilter apply`, as root)"
        )
    if place.fargate:
        return (
            f"set {advice} in this container definition's environment: Fargate grants no "
            "NET_ADMIN, so the variable is the only way"
        )
    return (
        f"set {advice} in this container definition's environment, or give the metamock "
        "container NET_ADMIN so it redirects 169.254.169.254 (`metamock sidecar` does when it may)"
    )


def check_endpoint_env(ctx: DoctorContext, redirect_ok: bool) -> Check:
    name = "endpoint-env"
    place = where(ctx)
    here = ctx.environ.get(ENDPOINT_VAR)
    pid1_env = pid1_environ(ctx.proc_root)
    pid1 = None if pid1_env is None else pid1_env.get(ENDPOINT_VAR) or "unset"
    where_seen = f"this process: {here or 'unset'}; PID 1: {pid1 or 'unreadable'}"
    if here and not _endpoint_ok(here, ctx.port):
        return failed(
            name, f"{ENDPOINT_VAR} points elsewhere ({where_seen})", f"set {endpoint_advice(ctx.port)}"
        )
    if here:
        return passed(name, where_seen)
    if redirect_ok:
        return passed(name, f"{ENDPOINT_VAR} unset, the redirect carries {IMDS_V4} traffic ({where_seen})")
    if place.sidecar:
        # The variable is for clients; the server's own container has none by design.
        agents = (
            f"the agents the sidecar starts get {endpoint_advice(ctx.port)} from it; "
            if place.command == "sidecar"
            else ""
        )
        others = "need it in their environment" + ("" if place.fargate else " unless the redirect is applied")
        return skipped(
            name,
            f"this is metamock's own container ({place.why}), where {ENDPOINT_VAR} is unset by "
            f"design: {agents}the other containers of the task {others}",
        )
    return failed(
        name,
        f"{ENDPOINT_VAR} unset and no working redirect: EC2 clients here cannot find the server "
        f"({where_seen})",
        _missing_endpoint_fix(place, ctx.port),
    )


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    if not has_net_admin(ctx.proc_root / "self" / "status"):
        why = "no CAP_NET_ADMIN: rules can be neither read nor applied here (normal on Fargate)"
        out.append(skipped("redirect", why))
        out.append(skipped("route", why))
        out.append(check_endpoint_env(ctx, redirect_ok=False))
        return
    rules = await read_rules(ctx)
    rule_check = check_rules(ctx, rules)
    out.append(rule_check)
    if rules.backend is None:
        out.append(skipped("route", "no redirect rules"))
        out.append(check_endpoint_env(ctx, redirect_ok=False))
        return
    route_check = await check_route(ctx)
    out.append(route_check)
    redirect_ok = rule_check.status.value == "pass" and route_check.status.value == "pass"
    out.append(check_endpoint_env(ctx, redirect_ok))
