"""The process-wide effects (metamock.runtime): made once, idempotently, and by nothing else;
and, through the CLI as a user runs it, what they are for: aiohttp's own 400s carry the EC2
banner and log nothing (`serve`), botocore logs no secret at debug level (`doctor -v`)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from aiohttp import web_response
from aiohttp.http_exceptions import BadHttpMessage

from metamock.imds.server import make_server
from metamock.runtime import DropClientErrors, install_process_effects
from tests.ecs_netns import run_python, serve_ecs, start_fake_agent
from tests.ecs_support import SECRETS
from tests.fakes.ecs_agent import fargate_env
from tests.netns import REPO, NetNS, base_env

QUIETED = ("botocore", "aiobotocore")


@pytest.fixture
def pristine(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """The process as aiohttp and logging leave it, restored afterwards; yields `aiohttp.server`."""
    monkeypatch.setattr(web_response, "SERVER_SOFTWARE", "Python/3 aiohttp/3")
    server_log = logging.getLogger("aiohttp.server")
    monkeypatch.setattr(server_log, "filters", [])
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    for name in QUIETED:
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        yield server_log
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _drops(server_log: logging.Logger) -> int:
    return sum(isinstance(f, DropClientErrors) for f in server_log.filters)


def test_the_effects_are_made_once_however_often_called(pristine: logging.Logger) -> None:
    install_process_effects()
    install_process_effects()
    assert web_response.SERVER_SOFTWARE == "EC2ws"  # type: ignore[attr-defined]
    assert _drops(pristine) == 1
    assert [logging.getLogger(name).level for name in QUIETED] == [logging.INFO, logging.INFO]


def test_botocore_stays_quiet_when_logging_is_configured_afterwards(pristine: logging.Logger) -> None:
    """The order of start-up must not matter: a DEBUG root configured later does not reach botocore."""
    root = logging.getLogger()
    install_process_effects()
    before = root.level
    root.setLevel(logging.DEBUG)
    try:
        assert not logging.getLogger("botocore.endpoint").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("aiobotocore.credentials").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(before)


def test_a_quieter_botocore_level_is_kept(pristine: logging.Logger) -> None:
    logging.getLogger("botocore").setLevel(logging.WARNING)
    install_process_effects()
    assert logging.getLogger("botocore").level == logging.WARNING


def test_the_filter_drops_client_errors_only() -> None:
    def record(exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), info
        )

    drop = DropClientErrors()
    assert not drop.filter(record(BadHttpMessage("bad token bytes")))
    assert drop.filter(record(RuntimeError("a real bug")))
    assert drop.filter(record(None))


async def test_building_a_server_changes_nothing_process_wide(pristine: logging.Logger) -> None:
    async def handler(request: object) -> web_response.Response:
        return web_response.Response()

    make_server(handler)
    assert web_response.SERVER_SOFTWARE == "Python/3 aiohttp/3"  # type: ignore[attr-defined]
    assert _drops(pristine) == 0
    assert logging.getLogger("botocore").level == logging.NOTSET


MALFORMED = """
import json, socket
answers = []
for junk in (b"GET /latest/meta-data/\\x00 HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n",
             b"GET /latest/meta-data/ HTTP/1.1\\r\\nX-aws-ec2-metadata-token: t\\x00ken\\r\\n\\r\\n"):
    with socket.create_connection(("127.0.0.1", 1338), timeout=5) as sock:
        sock.sendall(junk)
        sock.settimeout(3)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    answers.append(data.decode("latin-1"))
print(json.dumps(answers))
"""


@pytest.mark.root
def test_serve_answers_malformed_requests_as_ec2_and_logs_nothing(netns: NetNS) -> None:
    """`metamock serve -v`: aiohttp's own 400s say `Server: EC2ws` (no version banner), and the
    bad requests (whose bytes may hold a token) reach no log line, at debug level either."""
    start_fake_agent(netns)
    proc = serve_ecs(netns, "-v").proc
    try:
        answers = run_python(netns, MALFORMED, env=base_env())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    log = err
    for answer in answers:
        head = answer.split("\r\n\r\n", 1)[0].lower()
        assert head.startswith(("http/1.0 400", "http/1.1 400")), answer[:200]
        assert "\r\nserver: ec2ws\r\n" in head + "\r\n", answer[:200]
        assert "aiohttp" not in head and "python" not in head, answer[:200]
    assert "t\\x00ken" not in log and "Error handling request" not in log, log[-2000:]


@pytest.mark.root
def test_doctor_at_debug_logs_no_session_token(netns: NetNS) -> None:
    """`metamock doctor -v` signs an STS call with the task's credentials; botocore logs the
    canonical request (the session token in it) at DEBUG unless quieted."""
    start_fake_agent(netns)
    env = base_env(
        **fargate_env(), AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent"
    )
    done = netns.run([sys.executable, "-m", "metamock", "doctor", "-v"], cwd=REPO, env=env)
    out = done.stdout + done.stderr
    assert "sts" in out, out[-2000:]
    leaked = [secret[:6] + "..." for secret in SECRETS if secret in out]
    assert not leaked, f"secrets in doctor's output: {leaked}"
    assert " DEBUG botocore" not in out, out[-2000:]
