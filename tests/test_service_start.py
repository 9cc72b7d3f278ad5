"""Service start-up: every failure path undoes what was set up, the bound port is read through
aiohttp's public API, a busy port names `--port`, and the identity key is made off the loop."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from metamock.errors import NetfilterError, SettingsError, UpstreamError
from metamock.imds import signing
from metamock.service import Service
from metamock.settings import Settings
from metamock.sources.base import TaskFacts
from metamock.sources.static import StaticSource
from tests.conftest import REPO
from tests.imds_fixtures import fixture_credentials, fixture_task
from tests.netns import base_env
from tests.servers import serve_argv


class Recording(StaticSource):
    """A StaticSource that can fail or hang at start and remembers whether it was closed."""

    def __init__(self, *, fail: BaseException | None = None, hang: bool = False, task: Any = None) -> None:
        task = task or fixture_task()
        super().__init__(TaskFacts(task, task["Containers"][0], 0.0), fixture_credentials())
        self.fail, self.hang = fail, hang
        self.started = asyncio.Event()
        self.closed = 0

    async def start(self) -> None:
        self.started.set()
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail

    async def close(self) -> None:
        self.closed += 1


def settings(**flags: Any) -> Settings:
    flags.setdefault("port", 0)
    flags.setdefault("host", ["127.0.0.1"])
    return Settings.load(flags, {})


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def start(source: Recording, tmp_path: Path, **flags: Any) -> tuple[Service, BaseException | None]:
    service = Service(settings(**flags), source=source, control_socket=tmp_path / "control.sock")
    try:
        await service._start()
    except BaseException as exc:  # the failure under test
        return service, exc
    return service, None


def assert_undone(service: Service, source: Recording, tmp_path: Path) -> None:
    assert source.closed >= 1
    assert service._runner is None
    assert service.control is None
    assert not (tmp_path / "control.sock").exists()
    assert service.netfilter_backend is None


async def test_a_failing_source_start_is_undone(tmp_path: Path) -> None:
    source = Recording(fail=UpstreamError("ECS task metadata: HTTP 500"))
    service, exc = await start(source, tmp_path)
    assert isinstance(exc, UpstreamError)
    assert_undone(service, source, tmp_path)


async def test_a_failing_first_tree_build_is_undone(tmp_path: Path) -> None:
    # A source that hands translation what it cannot use (the ECS source now checks first).
    source = Recording(task={**fixture_task(), "TaskARN": "not-an-arn"})
    service, exc = await start(source, tmp_path)
    assert isinstance(exc, ValueError)
    assert_undone(service, source, tmp_path)


async def test_a_failing_redirect_after_listening_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound: list[int] = []

    async def refuse(self: Service) -> str:
        bound.append(self.port)
        raise NetfilterError("nft: Operation not permitted")

    monkeypatch.setattr(Service, "apply_redirect", refuse)
    source = Recording()
    service, exc = await start(source, tmp_path, netfilter=True)  # port 0: applied after listening
    assert isinstance(exc, NetfilterError)
    assert bound and bound[0] != 0
    assert not listening(bound[0])
    assert_undone(service, source, tmp_path)


async def test_a_failure_after_the_redirect_went_in_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []

    async def apply(self: Service) -> str:
        events.append(f"apply {self.port}")
        self.netfilter_backend = "nft"
        return "nft"

    def remove(**kw: Any) -> bool:
        events.append("remove")
        return True

    import metamock.netfilter

    monkeypatch.setattr(Service, "apply_redirect", apply)
    monkeypatch.setattr(metamock.netfilter, "remove", remove)
    with socket.socket() as holder:  # the port is known, so the redirect goes in before listening
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        source = Recording()
        service, exc = await start(source, tmp_path, port=port, netfilter=True)
    assert isinstance(exc, SettingsError) and exc.setting == "--port"
    assert events == [f"apply {port}", "remove"]
    assert_undone(service, source, tmp_path)


async def test_a_start_cancelled_by_a_signal_is_undone(tmp_path: Path) -> None:
    source = Recording(hang=True)
    service = Service(settings(), source=source, control_socket=tmp_path / "control.sock")
    starting = asyncio.ensure_future(service._start())
    await source.started.wait()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert_undone(service, source, tmp_path)


async def test_a_busy_port_names_the_port_and_is_undone(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        source = Recording()
        service, exc = await start(source, tmp_path, port=port)
    assert isinstance(exc, SettingsError)
    assert exc.setting == "--port"
    assert str(exc) == f"--port {port}: address already in use on 127.0.0.1"
    assert_undone(service, source, tmp_path)


async def test_port_0_reads_the_bound_port(tmp_path: Path) -> None:
    service, exc = await start(Recording(), tmp_path, host=["127.0.0.1", "::1"])
    try:
        assert exc is None
        assert service.port != 0
        assert listening(service.port)
        assert service._runner is not None
        assert {address[1] for address in service._runner.addresses} == {service.port}
    finally:
        await service.stop(stop_notice=False)


async def _get(port: int, path: str) -> tuple[int, bytes, float]:
    """GET `path` from the service (IMDSv1); status, body and when the answer arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, time.monotonic()


async def test_no_identity_key_is_made_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(key_file: Path | None) -> Any:
        raise AssertionError("an identity key made although nobody asked for a signature")

    monkeypatch.setattr(signing, "_make_material", forbidden)
    service, exc = await start(Recording(), tmp_path)
    try:
        assert exc is None
        status, body, _ = await _get(service.port, "/latest/meta-data/instance-id")
        assert (status, body[:2]) == (200, b"i-")
        assert not service.identity_signer.prepared
    finally:
        await service.stop(stop_notice=False)


async def test_a_signature_request_makes_the_key_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = signing._make_material
    threads: list[str] = []

    def slow(key_file: Path | None) -> Any:
        threads.append(threading.current_thread().name)
        time.sleep(0.5)  # a slow machine's key generation: other requests must not wait for it
        return made(key_file)

    monkeypatch.setattr(signing, "_make_material", slow)
    service, exc = await start(Recording(), tmp_path)
    try:
        assert exc is None
        signatures = [
            asyncio.ensure_future(_get(service.port, "/latest/dynamic/instance-identity/" + name))
            for name in ("signature", "pkcs7", "rsa2048")
        ]
        await asyncio.sleep(0.1)
        status, _, answered = await _get(service.port, "/latest/meta-data/instance-id")
        assert status == 200
        results = await asyncio.gather(*signatures)
        assert all(s == 200 and b for s, b, _ in results)
        assert results[2][1].startswith(b"MI")  # base64 DER of a PKCS#7 SignedData
        assert all(answered < signed for _, _, signed in results)  # the loop served meanwhile
        assert threads and threading.main_thread().name not in threads  # made off the loop
        assert len(threads) == 1  # three concurrent first requests, one key

        def forbidden(key_file: Path | None) -> Any:
            raise AssertionError("key generated again")

        monkeypatch.setattr(signing, "_make_material", forbidden)
        again = await _get(service.port, "/latest/dynamic/instance-identity/signature")
        assert again[:2] == results[0][:2]
    finally:
        await service.stop(stop_notice=False)


def test_a_key_file_still_works(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    signer = signing.IdentitySigner(pem)
    assert set(signer.sign(b"{}")) == {"signature", "pkcs7", "rsa2048"}
    assert signer.prepared


def test_serve_on_a_busy_port_is_one_line_naming_the_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            serve_argv(port=port), capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
            env=base_env(),
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"metamock serve: --port {port}: address already in use on 127.0.0.1"
    )
    assert "--host" not in result.stderr
    assert "Traceback" not in result.stderr
