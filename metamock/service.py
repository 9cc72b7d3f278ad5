"""The running service: a source, the current tree, the HTTP listeners, and their life cycle.

The tree is rebuilt from (facts, credentials, config, scenario documents) whenever one of them
changes, and swapped in one assignment; requests in flight keep the tree they started with.
A scenario whose time comes later is not computed per request: a timer rebuilds the tree at that
moment, so listings and values always come from the same build.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from metamock.clock import Clock, SystemClock
from metamock.control import ControlServer, choose_path, handle_request
from metamock.endpoint import bracket
from metamock.errors import MetamockError, SettingsError
from metamock.imds.counters import RequestCounters
from metamock.imds.server import ImdsHandler, make_server
from metamock.imds.signing import IdentitySigner
from metamock.imds.tokens import TokenSigner
from metamock.imds.tree import Tree
from metamock.scenarios import Scenario, ScenarioBook, stop_notice_documents
from metamock.settings import DEFAULT_HOSTS, ConfigFile, Settings
from metamock.sources.base import Credentials, MetadataSource
from metamock.status import collect
from metamock.translate import build_tree, deep_merge

if TYPE_CHECKING:
    from metamock.netfilter.keeper import RedirectKeeper

log = logging.getLogger(__name__)

MAX_TIMER = 60.0  # re-check scenario times at least this often (the wall clock may jump)


def make_source(settings: Settings, clock: Clock) -> MetadataSource:
    """The source `settings` asks for; imports only that source's module."""
    if settings.resolved_source() == "ecs":
        from metamock.sources.ecs import EcsSource

        return EcsSource(settings.environ, clock=clock, role_name=settings.config.role_name)
    from metamock.sources.local import LocalSource

    return LocalSource(
        task_document=dict(settings.task_metadata) if settings.task_metadata else None,
        profile=settings.profile,
        role_arn=settings.role_arn,
        clock=clock,
        environ=settings.environ,
    )


class Service:
    """Create with `await Service.start(settings)`; stop with `await service.stop()`.

    `control_socket`: None = the default path for the port, False = no control socket, or a path.
    `watch_interval`: seconds between checks of the config file with `--watch-config`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        source: MetadataSource | None = None,
        control_socket: Path | bool | None = None,
        watch_interval: float = 1.0,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.source: MetadataSource = source or make_source(settings, self.clock)
        self.config: ConfigFile = settings.config
        self.tokens = TokenSigner(self.clock)
        self.identity_signer = IdentitySigner()
        # Documents layered over meta-data/ by scenarios and the stop notice: name -> subtree.
        self.overlays: dict[str, Mapping[str, Any]] = {}
        self._tree = Tree({})
        self._tree_credentials: Credentials | None = None
        self._runner: web.ServerRunner | None = None
        self.port = settings.port
        self.netfilter_backend: str | None = None
        self.redirect_keeper: RedirectKeeper | None = None  # puts the redirect back when it goes
        self._credential_lock = asyncio.Lock()
        self.on_rebuild: list[Callable[[Tree], None]] = []
        self.scenarios = ScenarioBook()
        self.next_scenario_change: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._control_socket = control_socket
        self.control: ControlServer | None = None
        self._watch_interval = watch_interval
        self._watcher: asyncio.Task[None] | None = None
        # For `metamock status`: since when, and what was answered.
        self.started_at = self.clock.time()
        self.listening: list[str] = []  # the hosts bound (without ::1 when only IPv4 works)
        self.counters = RequestCounters()

    # -- TreeHolder -------------------------------------------------------------------------
    @property
    def tree(self) -> Tree:
        # The view at this instant: from the credentials' expiry on, the tree without them.
        return self._tree.at(self.clock.time())

    def now(self) -> float:
        return self.clock.time()

    async def ensure_credentials(self, timeout: float) -> bool:
        """Wait (bounded) for credentials; rebuild only when they differ from the tree's."""
        creds = await self.source.credentials_within(timeout)
        if creds is None or creds is self._tree_credentials:
            return False
        self.rebuild()
        return True

    # -- life cycle -------------------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        source: MetadataSource | None = None,
        control_socket: Path | bool | None = None,
        watch_interval: float = 1.0,
    ) -> Service:
        service = cls(
            settings, clock=clock, source=source,
            control_socket=control_socket, watch_interval=watch_interval,
        )  # fmt: skip
        await service._start()
        return service

    async def _start(self) -> None:
        """Start everything; on any failure (a signal's cancel included) undo what was set up."""
        try:
            self.source.on_change = self.rebuild
            await self.source.start()
            self.scenarios.load_config(self.config.scenarios, self.clock.time())
            self.rebuild()
            handler = ImdsHandler(
                self,
                self.tokens,
                tokens_required=self.settings.tokens == "required",
                hop_limit=self.settings.hop_limit,
                extra_hosts=frozenset(bracket(h) for h in self.settings.hosts),
                counters=self.counters,
            )
            server = make_server(handler, access_log=self.settings.access_log)
            runner = web.ServerRunner(server, handle_signals=False)
            await runner.setup()
            self._runner = runner
            # The redirect goes in before anything listens (when the port is known), so clients
            # are never told "ready" before 169.254.169.254 reaches us; until we listen they get
            # "connection refused" from lo, never the real IMDS.
            if self.settings.netfilter and self.port != 0:
                await self.apply_redirect()
            await self._listen()
            if self.settings.netfilter and self.netfilter_backend is None:
                await self.apply_redirect()
            await self._start_control()
        except BaseException:
            await self.stop(stop_notice=False)
            raise
        if self.settings.watch_config and self.settings.config_path is not None:
            # No baseline: the first check reloads, so an edit made between reading the file at
            # start-up and the first look is not taken for the starting state (unchanged = no-op).
            self._watcher = asyncio.ensure_future(self._watch_config(self.settings.config_path, None))

    async def apply_redirect(self) -> str:
        """Redirect 169.254.169.254 here (idempotent) and keep it; the backend used. Removed by `stop()`.

        nft/iptables and pyroute2 block, so this runs in a thread: the loop keeps serving.
        """
        from metamock import netfilter
        from metamock.netfilter.keeper import RedirectKeeper

        environ = self.settings.environ  # PATH and METAMOCK_IPTABLES, as `netfilter apply` reads them
        work = asyncio.ensure_future(asyncio.to_thread(netfilter.install, self.port, environ=environ))
        try:
            record = await asyncio.shield(work)
        except asyncio.CancelledError:
            # The thread goes on: wait for it, so that stop() removes what it applied.
            with contextlib.suppress(Exception):
                self.netfilter_backend = (await work).backend
            raise
        self.netfilter_backend = record.backend
        log.info("netfilter redirect applied (%s backend)", self.netfilter_backend)
        if self.redirect_keeper is None:
            self.redirect_keeper = RedirectKeeper(record, environ=environ)
            self.redirect_keeper.start()
        return self.netfilter_backend

    @property
    def redirect_repairs(self) -> int:
        """How often the keeper put the redirect back; what was missing the last time."""
        return self.redirect_keeper.repairs if self.redirect_keeper is not None else 0

    @property
    def redirect_last_repair(self) -> str | None:
        return self.redirect_keeper.last_repair if self.redirect_keeper is not None else None

    async def remove_redirect(self) -> None:
        """Remove the redirect this service applied (nothing when it applied none), off the loop."""
        if self.redirect_keeper is not None:  # first, or it would put the redirect back
            await self.redirect_keeper.stop()
            self.redirect_keeper = None
        if self.netfilter_backend is None:
            return
        from metamock import netfilter

        await asyncio.to_thread(lambda: netfilter.remove(environ=self.settings.environ))
        self.netfilter_backend = None
        log.info("netfilter redirect removed")

    async def _start_control(self) -> None:
        """The control socket; without it the server still serves (and says why triggers fail)."""
        if self._control_socket is False:
            return
        try:
            path = (
                self._control_socket
                if isinstance(self._control_socket, Path)
                else choose_path(self.port, self.settings.environ)
            )
            control = ControlServer(path, lambda request: handle_request(self, request))
            await control.start()
        except (OSError, MetamockError) as exc:
            log.warning("no control socket, `metamock trigger` will not reach this server: %s", exc)
            return
        self.control = control
        log.info("control socket at %s (metamock trigger)", path)

    async def _listen(self) -> None:
        assert self._runner is not None
        explicit = self.settings.hosts != DEFAULT_HOSTS
        bound = 0
        for host in self.settings.hosts:
            site = web.TCPSite(self._runner, host, self.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    # The port is what is wrong (held by another process, or privileged), not
                    # the address: say so, naming the setting that chose it.
                    why = "address already in use" if exc.errno == errno.EADDRINUSE else "permission denied"
                    if explicit or host != "::1" or exc.errno == errno.EACCES:
                        raise SettingsError("--port", f"{why} on {host}", value=str(self.port)) from exc
                elif explicit or host != "::1":
                    raise SettingsError(
                        "--host", f"cannot listen on {host}:{self.port}: {exc.strerror}"
                    ) from exc
                log.warning("not listening on [::1]:%d (%s); IPv4 only", self.port, exc.strerror)
                continue
            bound += 1
            self.listening.append(host)
            self.port = site.port  # the bound port: with --port 0, the one the kernel chose
        if not bound:
            raise SettingsError("--host", "no address could be listened on")

    def rebuild(self) -> None:
        """Rebuild the tree from the current inputs and swap it in; re-arm the scenario timer."""
        now = self.clock.time()
        rendered = self.scenarios.render(now)
        extra: dict[str, Any] = {}
        deep_merge(extra, rendered.documents)
        for overlay in self.overlays.values():  # the stop notice wins over scenarios
            deep_merge(extra, overlay)
        credentials = self.source.credentials()
        facts = self.source.facts()
        tree = Tree.build(
            build_tree(facts, credentials, self.config, extra_meta=extra, signer=self.identity_signer),
            built_at=now,
        )
        if credentials is not None:
            # The whole iam/ subtree follows the credentials' one expiry (see Tree.until).
            bare = build_tree(facts, None, self.config, extra_meta=extra, signer=self.identity_signer)
            tree = tree.until(credentials.expiration, Tree.build(bare, built_at=now))
        self._tree = tree
        # Recorded only once built: after a failed build, ensure_credentials tries again.
        self._tree_credentials = credentials
        self._arm_timer(rendered.next_change)
        for callback in self.on_rebuild:
            callback(self._tree)

    def _arm_timer(self, when: float | None) -> None:
        self._cancel_timer()
        self.next_scenario_change = when
        if when is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop (a test); nothing to wake up
            return
        delay = min(max(when - self.clock.time(), 0.0), MAX_TIMER)
        self._timer = loop.call_later(delay + 0.001, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        due = self.next_scenario_change
        if due is not None and self.clock.time() < due:  # woken early (MAX_TIMER): nothing changed
            self._arm_timer(due)
            return
        try:
            self.rebuild()
        except (ValueError, TypeError):
            log.exception("scenario rebuild failed; the previous tree stays")

    # -- scenarios (the control socket calls these) ------------------------------------------
    def trigger_scenario(self, scenario: Scenario) -> None:
        self.scenarios.trigger(scenario)
        self.rebuild()

    def clear_scenarios(self, kind: str | None = None) -> int:
        cleared = self.scenarios.clear(kind)
        self.rebuild()
        return cleared

    def scenario_status(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.scenarios.scenarios()]

    async def server_status(self, *, redirect: bool = True) -> dict[str, Any]:
        """What `metamock status` prints (metamock.status.collect)."""
        return await collect(self, redirect=redirect)

    def set_overlay(self, name: str, documents: Mapping[str, Any] | None) -> None:
        """Add, replace or (with None) remove a named layer of meta-data documents."""
        if documents is None:
            self.overlays.pop(name, None)
        else:
            self.overlays[name] = documents
        self.rebuild()

    def reload_config(self) -> bool:
        """Re-read the config file; keep the old one (and say why) when the new one is bad."""
        path = self.settings.config_path
        if path is None:
            return False
        previous_config, previous_book = self.config, copy.deepcopy(self.scenarios)
        try:
            config = ConfigFile.read(path)
            if config == previous_config:
                log.debug("config %s unchanged", path)
                return True
            self.config = config
            self.scenarios.load_config(config.scenarios, self.clock.time())
            try:
                self.rebuild()
            except (ValueError, TypeError) as exc:
                raise SettingsError("--config", str(exc)) from exc
        except SettingsError as exc:
            self.config, self.scenarios = previous_config, previous_book
            log.error("config reload rejected, keeping the previous one: %s", exc)
            return False
        if config.server != previous_config.server:
            log.warning("config [server] changed; server settings take effect only after a restart")
        log.info("config reloaded from %s", path)
        return True

    async def _watch_config(self, path: Path, last: tuple[int, int, int] | None) -> None:
        """Reload when the file's inode, size or mtime changes (editors replace or rewrite it)."""
        while True:
            await asyncio.sleep(self._watch_interval)
            current = _file_id(path)
            if current == last:
                continue
            last = current
            if current is None:
                log.warning("config file %s is gone; keeping the current config", path)
                continue
            self.reload_config()

    async def publish_stop_notice(self) -> None:
        seconds = self.settings.stop_notice
        if seconds <= 0:
            return
        self.set_overlay("stop-notice", stop_notice_documents(self.clock.time(), seconds))
        log.info("stop notice published; serving for %gs before shutting down", seconds)
        await asyncio.sleep(seconds)

    async def stop(self, stop_notice: bool = True) -> None:
        """Publish the stop notice (if asked and configured), stop listening, undo what we set up."""
        if stop_notice:
            await self.publish_stop_notice()
        self._cancel_timer()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self.control is not None:
            await self.control.close()
            self.control = None
        try:
            # Stop listening before the redirect goes: in between, clients are refused (fail
            # closed) rather than sent to whatever 169.254.169.254 is without us.
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
        finally:
            try:
                await self.remove_redirect()
            finally:
                await self.source.close()


def _file_id(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)
