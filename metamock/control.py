"""The local control channel: a unix socket (mode 0600) speaking JSON lines. Never TCP.

One request per line, one answer per line:
  {"op": "trigger", "scenario": "spot", "options": {"action": "stop", "in": 60}}
  {"op": "clear"} / {"op": "clear", "scenario": "rebalance"} / {"op": "status"}
  {"op": "server-status"} (`metamock status`; "redirect": false skips the live netfilter check)
Answers are {"ok": true, "scenarios": [...]} or {"ok": false, "error": "..."}.
A request may carry "netns" (the client's network namespace, metamock.control_socket.netns_key):
a server of another namespace refuses it. This module is the server; the client side and where
the socket lives are in metamock.control_socket (no asyncio, for a fast `metamock trigger`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from metamock.control_socket import MAX_LINE, choose_path, encode, netns_key
from metamock.errors import MetamockError
from metamock.scenarios import KINDS, Scenario, ScenarioError, build

__all__ = ["ControlServer", "Controlled", "choose_path", "handle_request"]  # choose_path: for Service

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


class Controlled(Protocol):
    """What the control channel needs from the service."""

    def now(self) -> float: ...

    def trigger_scenario(self, scenario: Scenario) -> None: ...

    def clear_scenarios(self, kind: str | None) -> int: ...

    def scenario_status(self) -> list[dict[str, Any]]: ...

    async def server_status(self, *, redirect: bool = True) -> dict[str, Any]: ...


Answer = dict[str, Any] | Awaitable[dict[str, Any]]


def handle_request(target: Controlled, request: Any) -> Answer:
    """Answer one decoded request line (an awaitable for what must wait, the redirect check)."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "a request is a JSON object"}
    op = request.get("op")
    kind = request.get("scenario")
    if kind is not None and kind not in KINDS:
        return {"ok": False, "error": f"unknown scenario {kind!r}; expected one of {', '.join(KINDS)}"}
    if op == "trigger":
        options = request.get("options", {})
        if kind is None or not isinstance(options, dict):
            return {"ok": False, "error": "trigger needs a scenario and an options object"}
        try:
            scenario = build(kind, options, target.now())
        except ScenarioError as exc:
            return {"ok": False, "error": f"--{exc.key}: {exc}" if exc.key else str(exc)}
        target.trigger_scenario(scenario)
        log.info("scenario triggered over the control socket: %s", scenario.describe())
        return {"ok": True, "triggered": scenario.describe(), "scenarios": target.scenario_status()}
    if op == "clear":
        cleared = target.clear_scenarios(kind)
        log.info("scenarios cleared over the control socket (%s): %d", kind or "all", cleared)
        return {"ok": True, "cleared": cleared, "scenarios": target.scenario_status()}
    if op == "status":
        return {"ok": True, "scenarios": target.scenario_status()}
    if op == "server-status":
        return target.server_status(redirect=request.get("redirect", True) is not False)
    return {"ok": False, "error": f"unknown op {op!r}; expected trigger, clear, status or server-status"}


class ControlServer:
    """Listens on `path`; answers each line with `handler(request)`. Only our uid (or root) may talk."""

    def __init__(self, path: Path, handler: Callable[[Any], Answer], netns: str | None = None) -> None:
        self.path = path
        self._handler = handler
        self.netns = netns_key() if netns is None else netns  # requests for another one are refused
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        # Bind under a temporary name, restrict it, then rename into place: the socket is never
        # reachable with looser permissions, and a stale socket of a dead server is replaced.
        if _alive(self.path):
            raise MetamockError(f"control socket {self.path} is in use by another server")
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(temporary))
            temporary.chmod(0o600)
            temporary.replace(self.path)
            self._inode = self.path.stat().st_ino
            sock.listen(16)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Closing a client's transport ends its read loop; its task then finishes by itself
        # (cancelling it instead would make asyncio's stream callback log the cancellation).
        for writer in self._clients.values():
            writer.close()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=READ_TIMEOUT)
        # Remove the path only if it is still ours (a newer server may have replaced it).
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()

    def _answer(self, request: Any) -> Answer:
        # The socket's file is reachable from every network namespace: a client that found it by
        # its namespace's name says so, and a server of another namespace does not act for it.
        if isinstance(request, dict) and "netns" in request:
            wanted = request.pop("netns")
            if self.netns is not None and wanted not in (None, self.netns):
                return {
                    "ok": False,
                    "error": f"this server runs in another network namespace ({self.netns}, not {wanted})",
                }
        return self._handler(request)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            if not _peer_allowed(writer):
                writer.write(encode({"ok": False, "error": "not allowed"}))
                return
            while True:
                try:
                    raw = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                except (TimeoutError, ValueError, asyncio.LimitOverrunError):
                    writer.write(encode({"ok": False, "error": "request too long or too slow"}))
                    return
                if not raw:
                    return
                try:
                    answer = self._answer(json.loads(raw))
                except json.JSONDecodeError:
                    answer = {"ok": False, "error": "a request is one line of JSON"}
                if inspect.isawaitable(answer):
                    answer = await answer
                writer.write(encode(answer))
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._clients.pop(task, None)
            writer.close()


def _peer_allowed(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid in (0, os.geteuid())


def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
