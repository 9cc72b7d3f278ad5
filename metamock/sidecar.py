"""The container entrypoint: serve in-process, redirect when privileged, re-export the ECS
variables where agents read them, and supervise the agents.

On SIGTERM the agents are stopped (reverse order, within the grace period) *while* the server
publishes the stop notice, and the server stops listening only after both: agents that flush
on shutdown (CloudWatch) still reach metadata and credentials, and the whole stop takes
max(grace, stop notice) rather than their sum, which keeps it inside ECS's stopTimeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamock import envexport
from metamock.agents import Program
from metamock.errors import MetamockError
from metamock.service import Service
from metamock.settings import Settings
from metamock.supervisor import Backoff, ChildSpec, Restart, Supervisor

log = logging.getLogger("metamock.sidecar")

ENDPOINT_VAR = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
PROFILE_SCRIPT = Path("/etc/profile.d/metamock-ecs.sh")
SYSTEMD_DIR = Path("/etc/systemd/system")
DROP_IN = "metamock-ecs.conf"


@dataclass(frozen=True)
class SidecarOptions:
    programs: tuple[Program, ...] = ()
    restart: Restart = Restart.ON_FAILURE
    grace: float = 10.0
    allow: envexport.AllowList = field(default_factory=envexport.AllowList)
    env_pid: str | None = None  # None: this process's own environment (it is the entrypoint)
    profile_script: Path | None = PROFILE_SCRIPT
    systemd_dir: Path | None = SYSTEMD_DIR
    netfilter: bool | None = None  # None: apply when CAP_NET_ADMIN is there
    backoff: Backoff = field(default_factory=Backoff)


def endpoint_url(hosts: tuple[str, ...], port: int) -> str:
    """Where the children reach the server: 127.0.0.1 when listened on, else a loopback host."""
    if "127.0.0.1" in hosts or "0.0.0.0" in hosts or not hosts:
        return f"http://127.0.0.1:{port}/"
    host = hosts[0]
    if host in ("::", "::1") or ":" in host:
        return f"http://[{'::1' if host == '::' else host}]:{port}/"
    return f"http://{host}:{port}/"


def exported_variables(options: SidecarOptions, own: Mapping[bytes, bytes]) -> dict[str, bytes]:
    """The allow-listed variables, from this process or from `--env-pid`."""
    if options.env_pid is None:
        environ = own
    else:
        environ = envexport.read_environ(envexport.resolve_pid(options.env_pid))
    return envexport.select(environ, options.allow)


def child_environment(
    base: Mapping[str, str],
    exported: Mapping[str, bytes],
    endpoint: str,
    program: Program,
    allow: envexport.AllowList,
) -> dict[str, str]:
    """The sidecar's environment minus static keys, plus the export, the endpoint, the preset's."""
    env = {k: v for k, v in base.items() if k not in envexport.STATIC_KEYS or allow.allows(k)}
    # surrogateescape: posix_spawn encodes these back to the exact original bytes.
    env.update({k: v.decode("utf-8", "surrogateescape") for k, v in exported.items()})
    env[ENDPOINT_VAR] = endpoint
    env.update(program.env)
    return env


def write_exports(options: SidecarOptions, exported: Mapping[str, bytes], endpoint: str) -> list[Path]:
    """The profile.d script and a systemd drop-in per agent unit; a failure is a warning."""
    variables = {**exported, ENDPOINT_VAR: endpoint.encode()}
    targets: list[tuple[Path, bytes]] = []
    if options.profile_script is not None:
        targets.append((options.profile_script, envexport.render_shell(dict(sorted(variables.items())))))
    if options.systemd_dir is not None:
        for program in options.programs:
            if program.unit is None:
                continue
            unit_vars = {**variables, **{k: v.encode() for k, v in program.env.items()}}
            data, skipped = envexport.render_systemd(dict(sorted(unit_vars.items())))
            for name in skipped:
                log.warning("%s left out of the %s drop-in: not valid UTF-8", name, program.unit)
            targets.append((options.systemd_dir / f"{program.unit}.service.d" / DROP_IN, data))
    written = []
    for path, data in targets:
        try:
            envexport.write_atomic(path, data)
        except OSError as exc:
            log.warning(
                "cannot write %s (%s); agents started by metamock get the variables anyway",
                path,
                exc.strerror or exc,
            )
            continue
        written.append(path)
    return written


def _apply_netfilter(service: Service, options: SidecarOptions, has_net_admin: bool) -> None:
    if service.netfilter_backend is not None:
        return  # --netfilter / METAMOCK_NETFILTER asked and the service applied it
    advice = f"{ENDPOINT_VAR}=http://127.0.0.1:{service.port}/"
    if options.netfilter is False or not has_net_admin:
        why = "netfilter is off" if options.netfilter is False else "no CAP_NET_ADMIN"
        log.info(
            "%s: 169.254.169.254 is not redirected; the agents here get %s, set the same in "
            "every other container of the task",
            why,
            advice,
        )
        return
    from metamock import netfilter  # imported only when privileged

    try:
        service.netfilter_backend = netfilter.apply(service.port)
    except MetamockError as exc:
        log.warning("redirect not applied (%s); clients need %s", exc, advice)
        return
    log.info("netfilter redirect applied (%s backend)", service.netfilter_backend)


async def run_sidecar(
    settings: Settings,
    options: SidecarOptions,
    environ: Mapping[str, str],
    environb: Mapping[bytes, bytes],
    has_net_admin: bool,
) -> int:
    """Serve and supervise until SIGTERM/SIGINT or a child's final failure; the exit code."""
    exported = exported_variables(options, environb)
    loop = asyncio.get_running_loop()
    stop, again = asyncio.Event(), asyncio.Event()
    service: Service | None = None
    supervisor: Supervisor | None = None

    def on_stop(signum: int) -> None:
        if stop.is_set():
            again.set()  # a second TERM/INT cuts the stop notice short
            return
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()
        if supervisor is not None:
            supervisor.request_stop(signum)

    def on_forward(signum: int) -> None:
        if supervisor is not None:
            supervisor.forward(signum)
        if signum == signal.SIGHUP and service is not None:
            service.reload_config()

    # Installed before anything slow: PID 1 silently drops a signal it has no handler for.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    for sig in (signal.SIGHUP, signal.SIGQUIT):
        loop.add_signal_handler(sig, on_forward, sig)
    log.debug("signal handlers installed; starting the server")
    code = 0
    try:
        service = await _start_unless_stopped(settings, stop)
        if service is None:
            log.info("stopped during start-up")
            return 0
        try:
            _apply_netfilter(service, options, has_net_admin)
            endpoint = endpoint_url(settings.hosts, service.port)
            write_exports(options, exported, endpoint)
            specs = [
                ChildSpec(
                    name=p.name,
                    argv=p.argv,
                    env=child_environment(environ, exported, endpoint, p, options.allow),
                    restart=options.restart,
                    before_start=p.before_start,
                )
                for p in options.programs
            ]
            if not stop.is_set():  # a SIGTERM during start-up: start nothing
                supervisor = Supervisor(specs, grace=options.grace, backoff=options.backoff)
                code = await _supervise(service, supervisor, stop, again)
        finally:
            await service.stop(stop_notice=False)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    log.info("sidecar stopped (exit code %d)", code)
    return code


async def _start_unless_stopped(settings: Settings, stop: asyncio.Event) -> Service | None:
    """Start the service; None when a SIGTERM comes first (ECS retries can take ~10 s)."""
    starting = asyncio.ensure_future(Service.start(settings))
    stopping = asyncio.ensure_future(stop.wait())
    both: list[asyncio.Future[Any]] = [starting, stopping]
    await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if starting.done():
        return starting.result()
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError, MetamockError):
        await starting
    return None


async def _supervise(
    service: Service, supervisor: Supervisor, stop: asyncio.Event, again: asyncio.Event
) -> int:
    await supervisor.start()
    names = [c.spec.name for c in supervisor.children]
    log.info("sidecar ready on port %d; programs: %s", service.port, ", ".join(names) or "none")
    try:
        finished = asyncio.ensure_future(supervisor.wait())
        stopping = asyncio.ensure_future(stop.wait())
        first: list[asyncio.Future[Any]] = [finished, stopping]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not stop.is_set():
            code = await finished  # a child failed for good: the task is not being stopped
            log.error("stopping: a program failed (exit code %d)", code)
            return code
        # Agents stop while the notice is served; the listener closes after both.
        notice = asyncio.ensure_future(service.publish_stop_notice())
        code = await finished
        cut = asyncio.ensure_future(again.wait())
        last: list[asyncio.Future[Any]] = [notice, cut]
        await asyncio.wait(last, return_when=asyncio.FIRST_COMPLETED)
        notice.cancel()
        cut.cancel()
        return code
    finally:
        await supervisor.close()
