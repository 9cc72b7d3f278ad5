"""The container entrypoint: serve in-process, redirect when privileged, re-export the ECS
variables where agents read them, and supervise the agents.

On SIGTERM the agents are stopped (reverse order, within the grace period) *while* the server
publishes the stop notice, and the server stops listening only after both: agents that flush
on shutdown (CloudWatch) still reach metadata and credentials, and the whole stop takes
max(grace, stop notice) rather than their sum, which keeps it inside ECS's stopTimeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from metamock import envexport
from metamock.agents import Program
from metamock.endpoint import ENDPOINT_VAR, client_host, endpoint_advice, endpoint_url
from metamock.errors import MetamockError
from metamock.lifecycle import Hooks, run_service
from metamock.service import Service
from metamock.settings import Settings
from metamock.supervisor import Backoff, ChildSpec, Restart, Supervisor

log = logging.getLogger("metamock.sidecar")

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


@dataclass
class Exports:
    """What `write_exports` wrote, so that exactly that is removed when the sidecar exits."""

    files: list[tuple[Path, bytes]] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)  # directories it created, parents first

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self.files]

    def remove(self) -> None:
        """Remove the files still holding what was written, then the directories left empty.

        A file changed since (by an image's own tooling, say) is not ours any more: it stays.
        Left behind, ours would point shells and units at a port nothing listens on.
        """
        for path, data in self.files:
            try:
                if path.read_bytes() == data:
                    path.unlink()
            except OSError as exc:
                log.debug("left %s in place: %s", path, exc.strerror or exc)
        for directory in reversed(self.dirs):
            with contextlib.suppress(OSError):  # not empty (someone else's files) or gone
                directory.rmdir()
        self.files, self.dirs = [], []


def may_write_in(directory: Path) -> bool:
    """Whether this process may create files in `directory` (or create it, when missing).

    Decides whether a default export target is tried at all: the image runs as an unprivileged
    user, who cannot write /etc, and trying would only warn on every start. An explicit
    `--profile-script`/`--systemd-dir` is always tried (and warns on failure).
    """
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK)


def write_exports(options: SidecarOptions, exported: Mapping[str, bytes], endpoint: str) -> Exports:
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
    written = Exports()
    for path, data in targets:
        missing = [p for p in reversed(path.parents) if not p.exists()]
        try:
            envexport.write_atomic(path, data)
        except OSError as exc:
            log.warning(
                "cannot write %s (%s); agents started by metamock get the variables anyway",
                path,
                exc.strerror or exc,
            )
        else:
            written.files.append((path, data))
        written.dirs += [p for p in missing if p.is_dir() and p not in written.dirs]
    return written


class SidecarHooks(Hooks):
    """The sidecar's part of the life cycle: redirect, exports and the supervised programs.

    SIGHUP and SIGQUIT go to every program (SIGHUP also reloads the config). SIGTERM stops the
    programs in reverse order within the grace period *while* the stop notice is served; SIGINT
    (Ctrl-C in `docker run -it`) does the same without the notice, as `metamock serve` does, and
    the programs get SIGINT. Either way the listener closes after the last program stopped.
    """

    forwarded = (signal.SIGQUIT,)

    def __init__(
        self,
        settings: Settings,
        options: SidecarOptions,
        environ: Mapping[str, str],
        exported: Mapping[str, bytes],
        has_net_admin: bool,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.options = options
        self.environ = environ
        self.exported = exported
        self.has_net_admin = has_net_admin
        self.supervisor: Supervisor | None = None
        self.written: Exports | None = None
        self._specs: list[ChildSpec] = []
        self._stop_signal: int | None = None

    async def prepare(self, service: Service) -> None:
        await self._redirect(service)
        endpoint = endpoint_url(service.port, client_host(self.settings.hosts))
        self.written = write_exports(self.options, self.exported, endpoint)
        self._specs = [
            ChildSpec(
                name=p.name,
                argv=p.argv,
                env=child_environment(self.environ, self.exported, endpoint, p, self.options.allow),
                restart=self.options.restart,
                before_start=p.before_start,
            )
            for p in self.options.programs
        ]

    async def run(self, service: Service) -> int:
        supervisor = Supervisor(self._specs, grace=self.options.grace, backoff=self.options.backoff)
        self.supervisor = supervisor
        await supervisor.start()
        if self._stop_signal is not None:  # a signal came as it started
            supervisor.request_stop(self._stop_signal)
        names = [c.spec.name for c in supervisor.children]
        log.info("sidecar ready on port %d; programs: %s", service.port, ", ".join(names) or "none")
        code = await supervisor.wait()
        if self._stop_signal is None:
            log.error("stopping: a program failed (exit code %d)", code)
        return code

    def stop(self, signum: int) -> None:
        self._stop_signal = signum
        if self.supervisor is not None:
            self.supervisor.request_stop(signum)

    def on_signal(self, signum: int) -> None:
        if self.supervisor is not None:
            self.supervisor.forward(signum)

    async def close(self) -> None:
        try:
            if self.supervisor is not None:
                await self.supervisor.close()
        finally:
            if self.written is not None:
                self.written.remove()
                self.written = None

    async def _redirect(self, service: Service) -> None:
        if service.netfilter_backend is not None:
            return  # --netfilter / METAMOCK_NETFILTER asked and the service applied it
        advice = endpoint_advice(service.port, client_host(self.settings.hosts))
        if self.options.netfilter is False or not self.has_net_admin:
            why = "netfilter is off" if self.options.netfilter is False else "no CAP_NET_ADMIN"
            log.info(
                "%s: 169.254.169.254 is not redirected; the agents here get %s, set the same in "
                "every other container of the task",
                why,
                advice,
            )
            return
        try:
            await service.apply_redirect()
        except MetamockError as exc:
            log.warning("redirect not applied (%s); clients need %s", exc, advice)


async def run_sidecar(
    settings: Settings,
    options: SidecarOptions,
    environ: Mapping[str, str],
    environb: Mapping[bytes, bytes],
    has_net_admin: bool,
) -> int:
    """Serve and supervise until SIGTERM/SIGINT or a program's final failure; the exit code."""
    exported = exported_variables(options, environb)
    hooks = SidecarHooks(settings, options, environ, exported, has_net_admin)
    code = await run_service(settings, hooks)
    log.info("sidecar stopped (exit code %d)", code)
    return code
