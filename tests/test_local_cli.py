"""`metamock serve --source local` credentials as a user runs it: one fetch at start through the
one credential cache, static keys dated 6 hours ahead, and a bad profile as one line, exit 2."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from metamock.clock import parse_iso
from tests.httpraw import request
from tests.servers import serve, serve_env

KEY, SECRET = "AKIAMETAMOCKCLIBASE1", "cli/secret/from/the/profile/file/00000000"
ROLE_PATH = "/latest/meta-data/iam/security-credentials/metamock-local"


def aws_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "credentials").write_text(
        f"[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n"
    )
    return {
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
    }


async def test_static_keys_served_with_a_synthetic_expiry(tmp_path: Path) -> None:
    server = serve("--stop-notice", "0", env=serve_env(**aws_files(tmp_path)), stderr=subprocess.PIPE)
    proc = server.proc
    try:
        resp = await request(server.port, "GET", ROLE_PATH)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert resp.status == 200
    doc = json.loads(resp.body)
    assert (doc["AccessKeyId"], doc["SecretAccessKey"], doc["Token"]) == (KEY, SECRET, "")
    assert parse_iso(doc["Expiration"]) - parse_iso(doc["LastUpdated"]) == 6 * 3600
    log = err
    assert proc.returncode == 0, log
    # One fetch at start, logged once by the source (which provider) and once by the cache.
    assert log.count("credentials via shared-credentials-file (key ****ASE1)") == 1
    assert log.count("credentials ****ASE1 obtained, valid for 21600 s") == 1
    assert "WARNING" not in log and "ERROR" not in log
    assert SECRET not in log


def test_unknown_profile_is_one_line_and_exit_2(tmp_path: Path) -> None:
    server = serve(
        "--stop-notice", "0", "--profile", "nope", env=serve_env(**aws_files(tmp_path)), ready=None,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    proc = server.proc
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    # The first fetch's error is the start's error: not also logged as a renewal to retry.
    assert out.splitlines() == ["metamock serve: --profile: profile 'nope' not found"]
