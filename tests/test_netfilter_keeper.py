"""The keeper: `metamock serve --netfilter` puts back a redirect that other software removed.

Each backend runs one real `serve --netfilter` in a namespace with only `lo`; every kind of damage
the reviewer did (flush the chain, delete the table or the jump, delete the route) is done to it
in turn, and it must be repaired within 5 s with exactly one WARNING naming what was missing.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netfilter_support import BACKENDS, bare_netns, curl, env, metamock, prepare, snapshot
from tests.netns import REPO, NetNS
from tests.servers import serve, until

pytestmark = pytest.mark.root

URL = "http://169.254.169.254/latest/meta-data/instance-id"
ROUTE_V4 = (["ip", "route", "del", "169.254.169.254/32"], "no route to 169.254.169.254")
ROUTE_V6 = (["ip", "-6", "route", "del", "fd00:ec2::254/128"], "no route to fd00:ec2::254")


def damages(backend: str) -> list[tuple[list[str], str]]:
    if backend == "nft":
        return [
            (["nft", "flush", "chain", "inet", "metamock", "output"], "chain output of table inet metamock is empty"),
            (["nft", "delete", "table", "inet", "metamock"], "table inet metamock is missing"),
            (["nft", "insert", "rule", "inet", "metamock", "output", "ip", "daddr", "169.254.169.254", "tcp", "dport",
              "80", "redirect", "to", ":9999"], "unexpected rule: ip daddr 169.254.169.254 tcp dport 80 redirect to :9999"),
            ROUTE_V4,
            ROUTE_V6,
        ]  # fmt: skip
    v4 = BACKENDS[backend][1] or "iptables"
    v6 = "ip6" + v4[2:]
    return [
        ([v4, "-w", "-t", "nat", "-F", "METAMOCK"], "chain METAMOCK of table nat (ip) is empty"),
        ([v4, "-w", "-t", "nat", "-D", "OUTPUT", "1"], "jump from nat OUTPUT missing (ip)"),
        ([v6, "-w", "-t", "nat", "-D", "OUTPUT", "1"], "jump from nat OUTPUT missing (ip6)"),
        ([v6, "-w", "-t", "nat", "-F", "METAMOCK"], "chain METAMOCK of table nat (ip6) is empty"),
        ROUTE_V4,
    ]


def no_nft_listing(directory: Path) -> Path:
    """A `nft` whose `list tables` fails, so `auto` picks iptables (everything else is the real nft)."""
    real = shutil.which("nft")
    assert real is not None
    directory.mkdir(exist_ok=True)
    fake = directory / "nft"
    fake.write_text(f'#!/bin/sh\n[ "$*" = "list tables" ] && exit 1\nexec {real} "$@"\n')
    fake.chmod(0o755)
    return directory


@pytest.fixture
def ns() -> Iterator[NetNS]:
    with bare_netns() as space:
        yield space


def warnings(log: Path) -> list[str]:
    text = log.read_text(errors="replace")
    return [line for line in text.splitlines() if "WARNING" in line and "netfilter" in line]


REPAIR_TIMES: list[float] = []


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_serve_netfilter_repairs_each_damage_within_5s(ns: NetNS, backend: str, tmp_path: Path) -> None:
    variant = BACKENDS[backend][1]
    prepare(ns, backend)  # legacy tables exist before, as on a legacy host
    environ = env(variant, no_nft_listing(tmp_path / "bin") if variant else None)
    before = snapshot(ns)
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        server = serve("--netfilter", "--stop-notice", "0", host=None, ns=ns, env=environ, stderr=stderr)
        status = metamock(ns, "netfilter", "status", env=environ)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"backend {BACKENDS[backend][0]}" in status.stdout
        assert "connection verified" in status.stdout
        for argv, named in damages(backend):
            seen = len(warnings(log))
            done = ns.run(argv)
            assert done.returncode == 0, (argv, done.stderr)
            damaged = time.monotonic()
            broken = metamock(ns, "netfilter", "status", env=environ)
            while len(warnings(log)) == seen and time.monotonic() - damaged < 10:
                time.sleep(0.05)
            took = time.monotonic() - damaged
            REPAIR_TIMES.append(took)
            new = warnings(log)[seen:]
            assert len(new) == 1, (argv, new)
            assert "netfilter redirect repaired" in new[0] and named in new[0], (named, new[0])
            assert took < 5, (argv, took)
            if broken.returncode == 0:  # the keeper may have been faster than status
                assert "connection verified" in broken.stdout
            else:
                assert "problem: " in broken.stdout or "not applied" in broken.stdout, broken.stdout
            again = metamock(ns, "netfilter", "status", env=environ)
            assert again.returncode == 0, (argv, again.stdout)
            assert curl(ns, URL).stdout.startswith("i-"), argv
        time.sleep(2.5)  # an intact redirect is left alone: no further warning
        assert len(warnings(log)) == len(damages(backend))
        assert server.stop(signal.SIGTERM) == 0
    print(f"repair times ({backend}): " + ", ".join(f"{t:.2f}" for t in REPAIR_TIMES))
    after = snapshot(ns)
    assert {
        k: v for k, v in after.items() if before[k] != v
    } == {}  # the keeper stopped before the remove: nothing put back


def test_sidecar_keeps_the_redirect_its_programs_use(ns: NetNS, tmp_path: Path) -> None:
    """`metamock sidecar` (privileged: it applies the redirect itself) puts back a flushed chain
    while it supervises a program that uses the hard-coded address, and removes it all at exit."""
    before = snapshot(ns)
    log = tmp_path / "sidecar.log"
    script = tmp_path / "client.sh"
    # The program asks the hard-coded address once a second, as an old SDK would.
    script.write_text(
        f"#!/bin/sh\nwhile :; do curl -s -m 1 {URL} > {tmp_path}/seen.tmp && mv {tmp_path}/seen.tmp "
        f"{tmp_path}/seen; sleep 0.2; done\n"
    )
    script.chmod(0o755)
    argv = [sys.executable, "-m", "metamock", "sidecar", "--source", "local", "--port", "1338",
            "--stop-notice", "0", "--run", f"client={script}", "--profile-script", "", "--systemd-dir", ""]  # fmt: skip
    with log.open("w") as stderr:
        proc = ns.popen(argv, env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            until((tmp_path / "seen").exists, "the program reached 169.254.169.254", proc=proc)
            assert (tmp_path / "seen").read_text().startswith("i-")
            seen = len(warnings(log))
            assert ns.run(["nft", "flush", "chain", "inet", "metamock", "output"]).returncode == 0
            until(lambda: len(warnings(log)) > seen, "the keeper's WARNING", proc=proc, timeout=5)
            (tmp_path / "seen").unlink()
            until((tmp_path / "seen").exists, "the program reaches it again", proc=proc, timeout=5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    new = warnings(log)[seen:]
    assert len(new) == 1 and "chain output of table inet metamock is empty" in new[0], new
    assert snapshot(ns) == before
