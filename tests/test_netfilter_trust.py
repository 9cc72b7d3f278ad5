"""What the reviewer did to `metamock netfilter`: partial states, concurrent applies, SIGKILL
mid-apply, a stale record left by a namespace whose inode the kernel reused.

Each test runs its rounds in one namespace with only `lo` (and, for iptables, nat tables made
beforehand, as Docker leaves them); every round must end in exactly one clean apply (the rule
listing equals a fresh apply's) and a clean remove (the namespace as before, nat tables kept).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.netfilter_support import (
    BACKENDS,
    bare_netns,
    env,
    listen,
    metamock,
    prepare,
    ruleset,
    snapshot,
    state_key,
)
from tests.netns import NetNS

pytestmark = pytest.mark.root
_NONCE = re.compile(r"nonce=[0-9a-f]+")


@pytest.fixture
def ns() -> Iterator[NetNS]:
    with bare_netns() as space:
        yield space


def docker_nat(ns: NetNS, backend: str) -> None:
    """nat tables with a rule of someone else's in them, as Docker leaves them."""
    variant = BACKENDS[backend][1]
    if variant is None:
        return
    for tool in (variant, "ip6" + variant[2:]):
        done = ns.run([tool, "-w", "-t", "nat", "-A", "POSTROUTING", "-o", "docker0", "-j", "RETURN"])
        assert done.returncode == 0, done.stderr


def listing(ns: NetNS) -> str:
    """The rules, nonce masked (a fresh apply draws a new one)."""
    return _NONCE.sub("nonce=N", ruleset(ns))


def cli(ns: NetNS, environ: dict[str, str], *args: str) -> list[str]:
    return ns.cmd([sys.executable, "-m", "metamock", "netfilter", *args])


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("nat_before", [True, False], ids=["docker-nat", "no-nat"])
def test_50_concurrent_apply_pairs_converge(ns: NetNS, backend: str, nat_before: bool) -> None:
    if nat_before:
        docker_nat(ns, backend)
    opts, environ = prepare(ns, backend)
    before = snapshot(ns)
    assert metamock(ns, "netfilter", "apply", *opts, env=environ).returncode == 0
    clean = listing(ns)
    assert metamock(ns, "netfilter", "remove", env=environ).returncode == 0
    assert snapshot(ns) == before
    rounds, good = 50 if nat_before else 10, 0
    for _ in range(rounds):
        pair = [
            subprocess.Popen(cli(ns, environ, "apply", *opts), env=environ, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]  # fmt: skip
        outcomes = [(p.wait(timeout=60), p.communicate()[1]) for p in pair]
        assert [code for code, _ in outcomes] == [0, 0], outcomes
        assert listing(ns) == clean
        status = metamock(ns, "netfilter", "status", env=environ)
        assert "problem:" not in status.stdout, status.stdout
        removed = metamock(ns, "netfilter", "remove", env=environ)
        assert removed.returncode == 0, removed.stderr
        assert snapshot(ns) == before
        good += 1
    print(f"concurrent pairs ({backend}, nat before: {nat_before}): {good}/{rounds} clean")


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_sigkill_mid_apply_then_remove_leaves_only_what_was_there(ns: NetNS, backend: str) -> None:
    docker = backend == "iptables-nft"  # also check a pre-existing nat table is kept
    opts, environ = prepare(ns, backend)
    before_nat = snapshot(ns)
    assert metamock(ns, "netfilter", "apply", *opts, env=environ).returncode == 0
    clean = listing(ns)
    assert metamock(ns, "netfilter", "remove", env=environ).returncode == 0
    rounds, good = 30, 0
    for i in range(rounds):
        if docker and i % 2:
            docker_nat(ns, backend)
        before = snapshot(ns)
        proc = subprocess.Popen(cli(ns, environ, "apply", *opts), env=environ, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(0.25 + (i % 10) * 0.03)  # python start-up is ~0.2 s: kill at varied moments
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        removed = metamock(ns, "netfilter", "remove", env=environ)
        assert removed.returncode == 0, removed.stderr
        assert snapshot(ns) == before, f"round {i}"
        again = metamock(ns, "netfilter", "apply", *opts, env=environ)
        assert again.returncode == 0, again.stderr
        if not (docker and i % 2):
            assert listing(ns) == clean, f"round {i}"
        assert metamock(ns, "netfilter", "remove", env=environ).returncode == 0
        assert snapshot(ns) == before, f"round {i}"
        if docker and i % 2:  # drop the stand-in Docker tables: the next round starts as the first
            for family in ("ip", "ip6"):
                ns.run(["nft", "delete", "table", family, "nat"])
        good += 1
    assert snapshot(ns) == before_nat
    print(f"SIGKILL rounds ({backend}): {good}/{rounds} clean")


def test_stale_record_with_another_nonce_never_misleads(ns: NetNS) -> None:
    """A record file under this namespace's name, written in a namespace that no longer exists."""
    path = Path(f"/run/metamock/netfilter-{state_key(ns)}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = {"backend": "iptables", "port": 4242, "ipv6": True, "iptables": "iptables-nft",
             "nat_tables": ["ip", "ip6"], "nonce": "0123456789abcdef", "routes": [], "exclude_uids": []}  # fmt: skip
    path.write_text(json.dumps(stale))
    docker_nat(ns, "iptables-nft")  # nat tables the record claims as metamock's: must be kept
    before = snapshot(ns)
    status = metamock(ns, "netfilter", "status")
    assert status.returncode == 1
    assert "recorded but not found" not in status.stdout
    assert status.stdout.startswith("netfilter: not applied"), status.stdout
    listen(ns)
    assert metamock(ns, "netfilter", "apply").returncode == 0  # nft: the stale iptables record is ignored
    status = metamock(ns, "netfilter", "status")
    assert status.returncode == 0, status.stdout
    assert ":4242" not in status.stdout
    assert json.loads(path.read_text())["nonce"] != stale["nonce"]
    path.write_text(json.dumps({**stale, "backend": "nft", "iptables": None}))  # stale again, nft
    status = metamock(ns, "netfilter", "status")
    assert "stale" in status.stdout and status.returncode == 0, status.stdout
    assert metamock(ns, "netfilter", "remove").returncode == 0
    assert snapshot(ns) == before


PARTIAL = {
    "nft": [
        (["nft", "flush", "chain", "inet", "metamock", "output"], "chain output of table inet metamock is empty"),
        (["ip", "route", "del", "169.254.169.254/32"], "no route to 169.254.169.254"),
        (["sh", "-c", "r=$(nft list table inet metamock | sed 's/:1338/:1339/'); "
                "nft flush chain inet metamock output; echo \"$r\" | nft -f -"],
         "169.254.169.254:80 points at :1339, recorded :1338"),
    ],
    "iptables-nft": [
        (["iptables-nft", "-w", "-t", "nat", "-F", "METAMOCK"], "chain METAMOCK of table nat (ip) is empty"),
        (["ip6tables-nft", "-w", "-t", "nat", "-D", "OUTPUT", "1"], "jump from nat OUTPUT missing (ip6)"),
        (["sh", "-c", "iptables-nft-save -t nat | grep '^-A OUTPUT' | sed 's/^-A/-I/' | "
          "xargs -L1 iptables-nft -w -t nat"], "jump from nat OUTPUT to METAMOCK appears 2 times (ip)"),
    ],
}  # fmt: skip


@pytest.mark.parametrize("backend", list(PARTIAL))
def test_status_and_doctor_fail_on_each_partial_state(ns: NetNS, backend: str) -> None:
    opts, environ = prepare(ns, backend)
    listen(ns)
    for argv, named in PARTIAL[backend]:
        assert metamock(ns, "netfilter", "apply", *opts, env=environ).returncode == 0
        assert metamock(ns, "netfilter", "status", env=environ).returncode == 0
        done = ns.run(argv)
        assert done.returncode == 0, (argv, done.stderr)
        status = metamock(ns, "netfilter", "status", env=environ)
        assert status.returncode == 1, (argv, status.stdout)
        assert status.stdout.startswith("netfilter: broken"), status.stdout
        assert any(named in line for line in status.stdout.splitlines() if "problem: " in line), status.stdout
        doctor = metamock(ns, "doctor", "--json", "--offline", "--port", "1338", env=environ)
        assert doctor.returncode == 1, doctor.stdout
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        failing = {n: c["detail"] for n, c in checks.items() if c["status"] == "fail"}
        assert any(named in detail for detail in failing.values()), failing
    assert metamock(ns, "netfilter", "remove", env=environ).returncode == 0


def test_status_probe_tells_a_foreign_server_from_ours(ns: NetNS) -> None:
    """Rules complete, but 127.0.0.1:1338 does not accept the token 169.254.169.254 issued."""
    assert metamock(ns, "netfilter", "apply").returncode == 0
    status = metamock(ns, "netfilter", "status")
    assert status.returncode == 1
    assert "connection fails: token PUT to 169.254.169.254:80: connection refused" in status.stdout
    assert "problem:" not in status.stdout
    assert metamock(ns, "netfilter", "remove").returncode == 0


def test_error_shows_the_tools_reason_not_its_banner(ns: NetNS, tmp_path: Path) -> None:
    opts, _ = prepare(ns, "iptables-nft")
    fake = tmp_path / "bin"
    fake.mkdir()
    tool = fake / "iptables-nft-restore"
    tool.write_text(
        "#!/bin/sh\necho 'iptables-restore v1.8.9 (nf_tables): ' >&2\necho 'line 3 failed' >&2\nexit 1\n"
    )
    tool.chmod(0o755)
    done = metamock(ns, "netfilter", "apply", *opts, env=env("iptables-nft", fake))
    assert done.returncode == 1
    assert "line 3 failed" in done.stderr, done.stderr
    assert "v1.8.9" not in done.stderr
