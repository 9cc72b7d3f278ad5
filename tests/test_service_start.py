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


async def test_the_identity_key_is_made_beside_the_start_not_at_a_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = signing._make_material
    threads: list[str] = []

    def slow(key_file: Path | None) -> Any:
        threads.append(threading.current_thread().name)
        time.sleep(0.5)  # a slow machine's key generation: the start must not wait for it
        return made(key_file)

    monkeypatch.setattr(signing, "_make_material", slow)
    began = time.monotonic()
    service, exc = await start(Recording(), tmp_path)
    try:
        assert exc is None
        assert time.monotonic() - began < 0.4  # listening before the key exists
        assert listening(service.port)
        await service.identity_key()
        assert service.identity_signer.prepared
        assert threads and threads[0] != threading.main_thread().name  # made off the loop

        def forbidden(key_file: Path | None) -> Any:
            raise AssertionError("key generated again (on the event loop)")

        monkeypatch.setattr(signing, "_make_material", forbidden)
        service.rebuild()
        node = service.tree.get("dynamic/instance-identity/rsa2048")
        assert node is not None
        assert node.body.startswith(b"MI")  # base64 DER of a PKCS#7 SignedData
    finally:
        await service.stop(stop_notice=False)


async def test_a_signature_asked_for_meanwhile_waits_for_the_same_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = signing._make_material
    calls: list[int] = []

    def slow(key_file: Path | None) -> Any:
        calls.append(1)
        time.sleep(0.3)
        return made(key_file)

    monkeypatch.setattr(signing, "_make_material", slow)
    service, exc = await start(Recording(), tmp_path)
    try:
        assert exc is None
        node = service.tree.get("dynamic/instance-identity/signature")
        assert node is not None and node.body  # waited for the thread's key, made no second one
        assert calls == [1]
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
    signer.prepare()
    assert signer.prepared
    assert set(signer.sign(b"{}")) == {"signature", "pkcs7", "rsa2048"}


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
