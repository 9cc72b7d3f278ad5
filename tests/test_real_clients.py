"""Real EC2 clients against `metamock serve --source ecs`, each inside a namespace with only `lo`,
the fake ECS agent on 169.254.170.2:80 and the environment Fargate injects."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_netns
from tests.ecs_netns import agent_calls, run_python, serve_ecs, start_fake_agent
from tests.moto_fixture import start_moto_server
from tests.netns import REPO, NetNS, base_env
from tests.servers import PY

pytestmark = [pytest.mark.root, pytest.mark.slow]
CREDS = json.loads((REPO / "tests" / "fixtures" / "credentials.json").read_text())
ENDPOINT = "http://127.0.0.1:1338/"
EXPECTED_INSTANCE_ID = "i-fb4d978c2a62f5a08"  # synthetic, from the fixture task ARN (stable)


@pytest.fixture
def task_ns() -> Iterator[NetNS]:
    ns = make_netns()
    try:
        start_fake_agent(ns)
        serve_ecs(ns)
        yield ns
    finally:
        ns.close()


def client_env(**extra: str) -> dict[str, str]:
    """A client whose supervisor dropped the ECS variables: only IMDS can give it credentials."""
    return base_env(AWS_EC2_METADATA_SERVICE_ENDPOINT=ENDPOINT, **extra)


def test_boto3_credential_chain_uses_iam_role(task_ns: NetNS) -> None:
    code = """
import json, boto3
from botocore.utils import IMDSRegionProvider
s = boto3.Session()
c = s.get_credentials()
f = c.get_frozen_credentials()
region = IMDSRegionProvider(s._session).provide()  # botocore's own path, honouring the endpoint
print(json.dumps({"method": c.method, "key": f.access_key, "secret": f.secret_key, "token": f.token, "region": region}))
"""
    got = run_python(task_ns, code, client_env())
    assert got["method"] == "iam-role"
    assert (got["key"], got["secret"], got["token"]) == (
        CREDS["AccessKeyId"],
        CREDS["SecretAccessKey"],
        CREDS["Token"],
    )
    assert got["region"] == "us-west-2"


def test_boto3_with_imdsv1_disabled_still_works(task_ns: NetNS) -> None:
    code = "import json, boto3; c = boto3.Session().get_credentials(); print(json.dumps({'m': c.method}))"
    got = run_python(task_ns, code, client_env(AWS_EC2_METADATA_V1_DISABLED="true"))
    assert got["m"] == "iam-role"


def test_aws_cli_subprocess_signs_with_iam_role_credentials(task_ns: NetNS) -> None:
    aws = str(Path(sys.executable).parent / "aws")
    listing = task_ns.run([aws, "configure", "list"], env=client_env())
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if "access_key" in line)
    assert "iam-role" in row
    assert CREDS["AccessKeyId"][-4:] in row
    # A signed call with those credentials, to a real STS-speaking server in the same namespace.
    moto, _ = start_moto_server(task_ns, 5000)
    ident = task_ns.run(
        [aws, "sts", "get-caller-identity", "--endpoint-url", "http://127.0.0.1:5000", "--region", "us-west-2", "--output", "json"],
        env=client_env(),
    )  # fmt: skip
    moto.kill()
    assert ident.returncode == 0, ident.stderr
    assert "Account" in json.loads(ident.stdout)


def test_pypi_ec2_metadata_reads_identity_through_the_fixed_address() -> None:
    """`ec2-metadata` (PyPI) hard-codes 169.254.169.254: serve there, in the namespace only."""
    ns = make_netns()
    try:
        subprocess.run(ns.cmd(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]), check=True)
        start_fake_agent(ns)
        serve_ecs(ns, "--allow-remote", host="169.254.169.254", port=80)
        code = """
import json
from ec2_metadata import ec2_metadata as m
print(json.dumps({"id": m.instance_id, "region": m.region, "az": m.availability_zone,
                  "ip": m.private_ipv4, "mac": m.mac, "type": m.instance_type, "account": m.account_id}))
"""
        got = run_python(ns, code, base_env())
    finally:
        ns.close()
    assert got == {
        "id": EXPECTED_INSTANCE_ID,
        "region": "us-west-2",
        "az": "us-west-2a",
        "ip": "192.0.2.3",
        "mac": "02:b7:20:19:72:39",
        "type": "t3.nano",
        "account": "111122223333",
    }


def test_upstream_sees_one_credentials_call_for_many_clients(task_ns: NetNS) -> None:
    before = agent_calls(task_ns).get("credentials", 0)
    code = """
import asyncio, json, aiohttp
async def main():
    async with aiohttp.ClientSession() as s:
        async def one():
            async with s.get("http://127.0.0.1:1338/latest/meta-data/iam/security-credentials/example-task-role") as r:
                return r.status
        statuses = await asyncio.gather(*[one() for _ in range(500)])
    print(json.dumps({"ok": statuses.count(200)}))
asyncio.run(main())
"""
    got = run_python(task_ns, code, base_env())
    assert got["ok"] == 500
    assert agent_calls(task_ns).get("credentials", 0) - before == 0  # all served from the cache


def test_ecs_mode_does_not_import_boto3() -> None:
    code = (
        "import sys, metamock.commands.serve, metamock.service, metamock.sources.ecs;"
        "bad = [m for m in ('boto3', 'botocore', 'aiobotocore') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
