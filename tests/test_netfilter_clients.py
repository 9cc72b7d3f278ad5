"""Real clients through the redirect, with no endpoint override: boto3 and Debian's ec2-metadata.

`metamock serve --netfilter` runs in a namespace with the fake ECS agent on 169.254.170.2:80;
the namespace has no IMDS route until serve applies the redirect, and none after it exits.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import FIXTURES, make_netns, require
from tests.ecs_netns import start_fake_agent
from tests.fakes.ecs_agent import fargate_env
from tests.netfilter_support import curl, env, metamock, snapshot
from tests.netns import NetNS
from tests.servers import serve, wait_http

pytestmark = pytest.mark.root

IMDS = "http://169.254.169.254/latest/meta-data"


@dataclass
class Served:
    ns: NetNS
    server: subprocess.Popen[str]
    before: dict[str, str]
    instance_id: str


def _client_env() -> dict[str, str]:
    """What an app without any AWS configuration sees: no endpoint override, no container creds."""
    out = env()
    out.update({"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"})
    return out


@pytest.fixture
def served() -> Iterator[Served]:
    ns = make_netns(imds_routes=False)
    try:
        start_fake_agent(ns)
        before = snapshot(ns)
        server = serve(
            "--netfilter", "--stop-notice", "0", source="ecs", host=None, ns=ns, env={**env(), **fargate_env()},
            ready=None,
        )  # fmt: skip
        wait_http(f"{IMDS}/instance-id", ns=ns, proc=server.proc)  # fails if serve exits
        direct = curl(ns, "http://127.0.0.1:1338/latest/meta-data/instance-id")
        yield Served(ns, server.proc, before, direct.stdout)
    finally:
        ns.close()


def test_boto3_credential_chain_gets_role_credentials_through_redirect(served: Served) -> None:
    code = (
        "import boto3, json; c = boto3.Session().get_credentials(); "
        "print(json.dumps([c.method, c.access_key, c.secret_key, c.token]))"
    )
    done = served.ns.run([sys.executable, "-c", code], env=_client_env())
    assert done.returncode == 0, done.stderr
    method, key, secret, token = json.loads(done.stdout)
    expected = json.loads((FIXTURES / "credentials.json").read_text())
    assert method == "iam-role"
    assert (key, secret, token) == (expected["AccessKeyId"], expected["SecretAccessKey"], expected["Token"])


def test_debian_ec2_metadata_through_redirect(served: Served) -> None:
    require(
        subprocess.run(["test", "-x", "/usr/bin/ec2-metadata"], check=False).returncode == 0,
        "needs Debian's amazon-ec2-utils (/usr/bin/ec2-metadata)",
    )
    done = served.ns.run(["/usr/bin/ec2-metadata", "-i", "-z"], env=_client_env())
    assert done.returncode == 0, done.stderr
    assert f"instance-id: {served.instance_id}" in done.stdout
    assert "placement: " in done.stdout
    assert served.instance_id.startswith("i-")


def test_graceful_exit_removes_everything(served: Served) -> None:
    assert metamock(served.ns, "netfilter", "status").returncode == 0
    served.server.send_signal(signal.SIGTERM)
    assert served.server.wait(timeout=30) == 0
    assert snapshot(served.ns) == served.before
    assert metamock(served.ns, "netfilter", "status").returncode == 1
