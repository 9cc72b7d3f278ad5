"""No credential or token value reaches a log line (at any level), an error message, a repr,
doctor's output, or a file others can read.

The secrets: the fake agent's secret key, session token, full access key id (the last four
characters may be logged), the FULL_URI authorization token, the credential id in RELATIVE_URI,
every IMDSv2 token the server issued, and the token signing key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from metamock.clock import SystemClock
from metamock.envexport import write_atomic
from metamock.errors import MetamockError
from metamock.service import Service
from metamock.settings import Settings
from metamock.sources.ecs import EcsSource
from tests.ecs_netns import run_python, serve_ecs, start_fake_agent
from tests.ecs_support import SECRETS, full_env, relative_env
from tests.fakes.ecs_agent import AUTH_TOKEN, FakeEcsAgent, fargate_env
from tests.httpraw import request
from tests.netns import REPO, NetNS, base_env
from tests.servers import running_service

ACCESS_KEY = "ASIAEXAMPLEEXAMPLE00"
ROTATED_KEY = "ASIAROTATED000000001"
ROLE = "/latest/meta-data/iam/security-credentials/example-task-role"
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}


def _leaks(text: str, extra: Iterable[str] = ()) -> list[str]:
    """The secrets found in `text`, shortened so the failure message does not print them."""
    found = [s for s in (*SECRETS, ACCESS_KEY, ROTATED_KEY, *extra) if s and s in text]
    return [f"{s[:4]}...({len(s)} chars)" for s in found]


def _signer_key_forms(service: Service) -> list[str]:
    key: bytes = service.tokens._key
    return [key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode(), repr(key)]


def _log_text(records: list[logging.LogRecord]) -> str:
    """Everything a handler could write: the message, its raw args, and any traceback."""
    formatter = logging.Formatter()
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
    return "\n".join(parts)


def ecs_service(
    env: dict[str, str], agent: FakeEcsAgent, config: Path
) -> AbstractAsyncContextManager[Service]:
    settings = Settings.load({"port": 0, "host": ["127.0.0.1"], "source": "ecs", "config": str(config)}, env)
    source = EcsSource(
        env, clock=SystemClock(), credentials_host=f"127.0.0.1:{agent.port}", role_name="example-task-role"
    )
    return running_service(settings=settings, source=source, control=False)


@pytest.mark.parametrize("shape", ["relative", "full"])
async def test_no_secret_in_any_log_line_or_error(
    shape: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    agent = FakeEcsAgent()
    await agent.start("127.0.0.1", 0)
    env = (
        relative_env(agent)
        if shape == "relative"
        else full_env(agent, AWS_CONTAINER_AUTHORIZATION_TOKEN=AUTH_TOKEN)
    )
    config = tmp_path / "metamock.toml"
    config.write_text('[meta-data]\n"instance-type" = "m5.large"\n')
    issued: list[str] = []
    errors: list[str] = []
    try:
        async with ecs_service(env, agent, config) as service:
            port = service.port
            # Requests: token, credentials with it, bad and huge tokens, IMDSv1, junk.
            put = await request(port, "PUT", "/latest/api/token", TTL)
            issued.append(put.body.decode())
            good = await request(port, "GET", ROLE, {"X-aws-ec2-metadata-token": issued[0]})
            assert b"exampleSecretKey" in good.body
            for token in (issued[0][:-2] + "xx", "A" * 10_000, issued[0] + "\x7f"):
                await request(port, "GET", ROLE, {"X-aws-ec2-metadata-token": token})
            await request(port, "GET", ROLE)
            await request(
                port,
                "GET",
                "/",
                raw=f"GET {ROLE} HTTP/1.1\r\nX-aws-ec2-metadata-token: {issued[0]}\x00\r\n\r\n".encode(),
            )
            # Credential refresh: rotation, then upstream failures, 429, bad JSON, recovery.
            cache = service.source._cache  # type: ignore[attr-defined]
            agent.rotate()
            await cache.refresh()
            put = await request(port, "PUT", "/latest/api/token", TTL)
            issued.append(put.body.decode())
            rotated = await request(port, "GET", ROLE, {"X-aws-ec2-metadata-token": issued[1]})
            assert b"rotatedSecret" in rotated.body
            for steer in ({"fail": 1}, {"status": 429}, {"status": 403}, {"bad_json": True}):
                agent.fail_count = {"credentials": steer.get("fail", 0)}
                agent.status = {"credentials": steer["status"]} if "status" in steer else {}
                agent.bad_json = {"credentials"} if "bad_json" in steer else set()
                await cache.refresh()
            agent.status, agent.bad_json = {}, set()
            await cache.refresh()
            # Errors raised on purpose carry one line each; none may carry a secret.
            try:
                await service.source._client.credentials(obtained_at=time.time())  # type: ignore[attr-defined]
            except MetamockError as exc:
                errors.append(str(exc))
            agent.status = {"credentials": 500}
            try:
                await service.source._client.credentials(obtained_at=time.time())  # type: ignore[attr-defined]
            except MetamockError as exc:
                errors.append(str(exc))
            agent.status = {}
            # Reload: a good config, then a bad one (rejected and logged).
            config.write_text('[meta-data]\n"instance-type" = "m5.xlarge"\n')
            assert service.reload_config()
            config.write_text("[meta-data\n")
            assert not service.reload_config()
            # Reprs of everything metamock keeps, reachable from the service.
            reprs = _reprs(service)
            extra = [*issued, *_signer_key_forms(service)]
    finally:
        await agent.stop()
    await asyncio.sleep(0)
    assert caplog.records, "nothing was logged: the test would prove nothing"
    in_log = _leaks(_log_text(caplog.records), extra)
    assert not in_log, f"secrets in the log: {in_log}"
    assert errors, "no error was raised: the test would prove nothing"
    in_errors = _leaks("\n".join(errors), extra)
    assert not in_errors, f"secrets in error messages: {in_errors}"
    in_reprs = sorted({kind for kind, text in reprs if _leaks(text, extra)})
    assert not in_reprs, f"the repr of {in_reprs} shows a secret"


def _reprs(root: object, depth: int = 4) -> list[tuple[str, str]]:
    """(type, repr and str) of every metamock object reachable from `root` through attributes
    and containers."""
    seen: set[int] = set()
    out: list[tuple[str, str]] = []

    def walk(obj: Any, level: int) -> None:
        if id(obj) in seen or level > depth:
            return
        seen.add(id(obj))
        if type(obj).__module__.startswith("metamock"):
            out.append((type(obj).__qualname__, repr(obj) + "\n" + str(obj)))
        children: Iterable[Any] = ()
        if isinstance(obj, dict):
            children = obj.values()
        elif isinstance(obj, list | tuple | set | frozenset):
            children = obj
        elif type(obj).__module__.startswith("metamock"):
            slots = [getattr(obj, s, None) for c in type(obj).__mro__ for s in getattr(c, "__slots__", ())]
            children = [*getattr(obj, "__dict__", {}).values(), *slots]
        for child in children:
            walk(child, level + 1)

    walk(root, 0)
    return out


def test_settings_and_credentials_reprs_mask_secrets() -> None:
    env = {
        **fargate_env(),
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": AUTH_TOKEN,
        "AWS_SECRET_ACCESS_KEY": SECRETS[0],
    }
    settings = Settings.load({"port": 0}, env)
    source = EcsSource(env)
    from tests.imds_fixtures import fixture_credentials

    creds = fixture_credentials()
    text = "\n".join([repr(settings), str(settings), repr(source.endpoints), repr(creds), str(creds)])
    assert not _leaks(text)


# ---- doctor --------------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("shape", ["relative", "full"])
def test_doctor_output_carries_no_secret(netns: NetNS, shape: str) -> None:
    start_fake_agent(netns)
    serve_ecs(netns)
    env = base_env(**fargate_env(), AWS_EC2_METADATA_SERVICE_ENDPOINT="http://127.0.0.1:1338/")
    if shape == "full":
        del env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://169.254.170.2/v1/credentials"
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = AUTH_TOKEN
    outputs = []
    for extra in (["--json"], []):
        proc = netns.run(
            [sys.executable, "-m", "metamock", "doctor", "--offline", *extra], env=env, cwd=REPO, timeout=60
        )
        outputs.append(proc.stdout + proc.stderr)
        if extra:
            assert json.loads(proc.stdout)["checks"], "doctor reported nothing"
    assert not _leaks("\n".join(outputs)), "doctor printed a secret"


CLIENT = """
import http.client, json, socket
def req(method, path, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", 1338, timeout=5)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    return r.status, r.read().decode()
role = "/latest/meta-data/iam/security-credentials/example-task-role"
tokens = []
for _ in range(3):
    tokens.append(req("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "600"})[1])
statuses = [req("GET", role, {"X-aws-ec2-metadata-token": t})[0] for t in tokens]
statuses += [req("GET", role, {"X-aws-ec2-metadata-token": t})[0] for t in (tokens[0][:-2] + "xx", "A" * 10000)]
for junk in (b"GET " + role.encode() + b" HTTP/1.1\\r\\nX-aws-ec2-metadata-token: " + tokens[0].encode() + b"\\x00\\r\\n\\r\\n",
             b"PUT /latest/api/token HTTP/1.1\\r\\nX-aws-ec2-metadata-token-ttl-seconds: " + tokens[1].encode() + b"\\r\\n\\r\\n",
             b"\\x16\\x03\\x01" + tokens[2].encode() * 40):
    with socket.create_connection(("127.0.0.1", 1338), timeout=5) as sock:
        sock.sendall(junk)
        sock.settimeout(2)
        try:
            sock.recv(65536)
        except OSError:
            pass
print(json.dumps({"tokens": tokens, "statuses": statuses}))
"""


@pytest.mark.root
def test_serve_at_debug_logs_no_secret(netns: NetNS, tmp_path: Path) -> None:
    """The real `metamock serve -v` (uvloop, logging configured by the CLI): start, requests,
    short-lived credentials refreshed, a bad and a good SIGHUP reload, SIGTERM with a stop notice."""
    start_fake_agent(netns, "--lifetime", "600")  # under the 15 min floor: refreshes keep coming
    config = tmp_path / "metamock.toml"
    config.write_text('[meta-data]\n"instance-type" = "m5.large"\n')
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        server = serve_ecs(
            netns, "-v", "--config", str(config), stop_notice=1, stdout=log_file, stderr=log_file
        )
    proc = server.proc
    client = run_python(netns, CLIENT, env=base_env())
    assert client["statuses"] == [200, 200, 200, 401, 401]
    config.write_text("[meta-data\n")
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    config.write_text('[meta-data]\n"instance-type" = "m5.xlarge"\n')
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    text = log_path.read_text(errors="replace")
    assert "config reload rejected" in text and "obtained" in text and "stop notice" in text, text[-2000:]
    leaked = _leaks(text, client["tokens"])
    assert not leaked, f"secrets in serve's log: {leaked}"


# ---- files -----------------------------------------------------------------------------------------

FORMATS = ["shell", "dotenv", "json", "systemd"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_env_files_are_0600_even_over_a_readable_file_and_under_umask_0(tmp_path: Path, fmt: str) -> None:
    env = {**base_env(**fargate_env()), "AWS_CONTAINER_AUTHORIZATION_TOKEN": AUTH_TOKEN}
    carrier = subprocess.Popen(["sleep", "30"], env=env)
    out = tmp_path / f"ecs.{fmt}"
    out.write_text("old\n")
    out.chmod(0o644)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "metamock", "env", "export", "--pid", str(carrier.pid),
             "--format", fmt, "--output", str(out)],
            env=base_env(), cwd=REPO, capture_output=True, text=True, timeout=30,
            check=False, preexec_fn=lambda: os.umask(0),  # a careless umask
        )  # fmt: skip
    finally:
        carrier.kill()
        carrier.wait()
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert AUTH_TOKEN in out.read_text()  # the file carries it; nothing else may
    assert not _leaks(proc.stdout + proc.stderr)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left"


def test_write_atomic_never_exposes_the_file(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        target = tmp_path / "nested" / "env"
        write_atomic(target, f"TOKEN={AUTH_TOKEN}\n".encode())
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
