"""The suite's one way to run metamock as a server: a free port, the `metamock serve` command line,
"is it ready" (in and out of a network namespace), a real `serve` process, an in-process service.

- `free_port()`: a loopback port nobody listens on (other suites run beside this one: never a
  fixed port outside a namespace).
- `serve_argv(...)`: `python -m metamock serve ...` as a user types it.
- `wait_http(url)` / `wait_ready(port)`: until a URL answers 2xx / until `serve` is healthy, the
  probe run through the namespace when one is given (it has only `lo`: nothing leaves the machine);
  `until(probe, what)` for anything else (each fails at once if the watched process exits).
- `serve(...)`: a `metamock serve` subprocess, ready, as a `ServeProcess` (`.port`, `.proc`,
  `.stop()`, a context manager that kills what is left).
- `running_service(...)`: the service in this process (async context manager) on 127.0.0.1:<any>,
  with the fixture task unless told otherwise; `service_thread(...)`: the same on its own event
  loop in a thread, for synchronous tests (Hypothesis).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar

from metamock.clock import Clock
from metamock.commands.healthcheck import check as healthcheck
from metamock.service import Service
from metamock.settings import DEFAULT_PORT, ConfigFile, Settings
from metamock.sources.base import MetadataSource
from tests.cli_support import cli_env
from tests.imds_fixtures import fixture_credentials, fixture_source
from tests.netns import REPO, NetNS, base_env

PY = sys.executable
T = TypeVar("T")
Output = int | IO[Any] | None  # what Popen takes for stdout/stderr


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_argv(
    *args: str, source: str | None = "local", host: str | None = "127.0.0.1", port: int | None = None
) -> list[str]:
    """`python -m metamock serve [--source S] [--host H] [--port P] *args`; None leaves a flag out
    (`host=None` in ECS mode keeps its default listeners)."""
    argv = [PY, "-m", "metamock", "serve"]
    if source is not None:
        argv += ["--source", source]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    return [*argv, *args]


def serve_env(**extra: str) -> dict[str, str]:
    """What a test's `serve` runs with: no AWS/ECS/metamock variables, no IMDS to find, no AWS
    files (a local source falls back to its fake keys), unbuffered output; plus `extra`."""
    no_files = {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    return cli_env(**{**no_files, "PYTHONUNBUFFERED": "1", **extra})


# -- waiting ------------------------------------------------------------------------------------


def until(
    probe: Callable[[], object],
    what: str,
    *,
    proc: subprocess.Popen[Any] | None = None,
    timeout: float = 30.0,
) -> None:
    """Until `probe()` is true; fails at once when `proc` exits, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        if probe():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: no answer within {timeout} s")
        time.sleep(0.05)


def _answers_2xx(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError):  # HTTPError (4xx/5xx) is a URLError
        return False


def wait_http(
    url: str, *, ns: NetNS | None = None, proc: subprocess.Popen[Any] | None = None, timeout: float = 30.0
) -> None:
    """Until `url` answers 2xx: from here, or with curl inside `ns`."""
    if ns is None:
        until(lambda: _answers_2xx(url), url, proc=proc, timeout=timeout)
        return
    curl = ["curl", "-sfg", "--noproxy", "*", "-o", "/dev/null", "-m", "1", url]
    until(lambda: ns.run(curl, timeout=10).returncode == 0, url, proc=proc, timeout=timeout)


def wait_ready(
    port: int,
    proc: subprocess.Popen[Any] | None = None,
    ns: NetNS | None = None,
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> None:
    """Until the server on host:port is healthy as `metamock healthcheck` means it (a token PUT and
    the instance id with it): its own check from here, the command itself inside `ns`."""
    what = f"metamock serve on {host}:{port}"
    if ns is None:
        until(lambda: healthcheck(host, port, 1.0) is None, what, proc=proc, timeout=timeout)
        return
    argv = [PY, "-m", "metamock", "healthcheck", "--host", host, "--port", str(port), "--timeout", "1"]

    def probe() -> bool:
        return ns.run(argv, cwd=REPO, env=base_env(), timeout=10).returncode == 0

    until(probe, what, proc=proc, timeout=timeout)


# -- a real `metamock serve` --------------------------------------------------------------------


@dataclasses.dataclass
class ServeProcess:
    """A running `metamock serve` (text mode pipes); `with` kills whatever is left at the end."""

    proc: subprocess.Popen[str]
    port: int
    host: str
    ns: NetNS | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_ready(self.port, self.proc, self.ns, host=self.host, timeout=timeout)

    def wait_for_line(self, needle: str, timeout: float = 30.0) -> str:
        """Read stderr (a pipe) until a line holding `needle`; `serve` logs "serving IMDS" once it
        listens and its control socket is up."""
        stderr = self.proc.stderr
        assert stderr is not None, "start it with stderr=subprocess.PIPE"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = stderr.readline()
            if needle in line:
                return line
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"no {needle!r} from the server (exit {self.proc.poll()})")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig`, wait for the exit, close the pipes; the exit code."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._close_pipes()
        return code

    def close(self) -> None:
        """Kill it if it still runs, reap it, close the pipes (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def serve(
    *args: str,
    source: str | None = "local",
    host: str | None = "127.0.0.1",
    port: int | None = None,
    ns: NetNS | None = None,
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    ready: Literal["http", "log"] | None = "http",
    stdout: Output = subprocess.DEVNULL,
    stderr: Output = subprocess.DEVNULL,
    timeout: float = 30.0,
) -> ServeProcess:
    """Start `serve_argv(*args, source=, host=, port=)` and wait until it is ready.

    `port`: None is a free port here, the default port (1338) in a namespace (each is its own).
    `ns`: run it in that namespace (and probe it there). `env`: the whole environment (default
    `serve_env()`). `prefix`: argv before python (`setpriv ...`). `ready`: "http" waits until it
    is healthy, "log" until it logs "serving IMDS" (then its control socket is up too; stderr is
    a pipe for it), None returns at once.
    """
    if port is None:
        port = DEFAULT_PORT if ns is not None else free_port()
    if ready == "log":
        stderr = subprocess.PIPE
    argv = [*prefix, *serve_argv(*args, source=source, host=host, port=port)]
    environ = dict(env) if env is not None else serve_env()
    argv = argv if ns is None else ns.cmd(argv)
    # errors="replace": a log line is read as text even if a client sent undecodable bytes.
    proc = subprocess.Popen(
        argv, cwd=REPO, env=environ, stdout=stdout, stderr=stderr, text=True, errors="replace"
    )
    if ns is not None:
        ns.procs.append(proc)  # the namespace's close() kills it too
    server = ServeProcess(proc, port, host or "127.0.0.1", ns)
    try:
        if ready == "http":
            server.wait_ready(timeout)
        elif ready == "log":
            server.wait_for_line("serving IMDS", timeout)
    except BaseException:
        server.close()
        raise
    return server


# -- the service in this process ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_service(
    tmp_path: Path | None = None,
    *,
    settings: Settings | None = None,
    config: str | ConfigFile | None = None,
    source: MetadataSource | None = None,
    clock: Clock | None = None,
    control: bool = True,
    watch_interval: float = 0.1,
    **flags: Any,
) -> AsyncIterator[Service]:
    """A started `Service` on 127.0.0.1:<any> (flags as `Settings.load` takes them), stopped
    without a notice at the end.

    `tmp_path`: where a config file and the control socket go (without it: no control socket).
    `settings`: instead of flags. `config`: TOML text (written to tmp_path/metamock.toml and read
    as `--config`, so reloads work) or a ready `ConfigFile`. `source`: default the fixture task
    with fixture credentials (dated by `clock`). `control`: False for no control socket.
    """
    if settings is None:
        flags.setdefault("port", 0)
        flags.setdefault("host", ["127.0.0.1"])
        if isinstance(config, str):
            assert tmp_path is not None, "a config file needs tmp_path"
            path = tmp_path / "metamock.toml"
            path.write_text(config)
            flags["config"] = str(path)
        settings = Settings.load(flags, {})
    else:
        assert not flags, "settings or flags, not both"
    if isinstance(config, ConfigFile):
        settings = dataclasses.replace(settings, config=config)
    if source is None:
        source = fixture_source(fixture_credentials(clock.time() if clock else None))
    service = await Service.start(
        settings,
        clock=clock,
        source=source,
        control_socket=(tmp_path / "control.sock") if control and tmp_path is not None else False,
        watch_interval=watch_interval,
    )
    try:
        yield service
    finally:
        await service.stop(stop_notice=False)


class ServiceThread:
    """`running_service(**kw)` on a private event loop in a daemon thread (start, then close)."""

    def __init__(self, **kw: Any) -> None:
        self._kw = kw
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.service: Service | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="metamock-service", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start()
            self.error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with running_service(**self._kw) as service:
            self.service = service
            self._ready.set()
            await self._stop.wait()

    @property
    def port(self) -> int:
        assert self.service is not None
        return self.service.port

    def start(self) -> ServiceThread:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the service's loop and return its result."""
        done: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(_call(fn, *args), self._loop)
        return done.result(10)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


async def _call(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


@contextlib.contextmanager
def service_thread(**kw: Any) -> Iterator[ServiceThread]:
    thread = ServiceThread(**kw).start()
    try:
        yield thread
    finally:
        thread.close()
