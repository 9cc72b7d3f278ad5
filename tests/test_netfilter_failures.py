"""netfilter failure paths inside throwaway namespaces: rollback, no privilege, lost state, IPv6 off."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.netfilter_support import (
    BACKENDS,
    INSTANCE_ID,
    bare_netns,
    curl,
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

V4_URL = "http://169.254.169.254/latest/meta-data/instance-id"


@pytest.fixture
def ns() -> Iterator[NetNS]:
    with bare_netns() as space:
        yield space


def _fake_tool(directory: Path, name: str, script: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_failure_in_the_middle_leaves_nothing(ns: NetNS, backend: str, tmp_path: Path) -> None:
    _, variant = BACKENDS[backend]
    opts, _ = prepare(ns, backend)
    if variant is None:  # nft: everything works until the one transaction fails
        real = shutil.which("nft")
        assert real is not None
        _fake_tool(
            tmp_path / "bin",
            "nft",
            f'case " $* " in *" -f "*) echo "injected failure" >&2; exit 1;; esac\nexec {real} "$@"\n',
        )
    else:  # iptables: IPv4 chain and routes are in place when the IPv6 restore fails
        _fake_tool(
            tmp_path / "bin", "ip6" + variant[2:] + "-restore", 'echo "injected failure" >&2; exit 1\n'
        )
    before = snapshot(ns)
    done = metamock(ns, "netfilter", "apply", *opts, env=env(variant, tmp_path / "bin"))
    assert done.returncode == 1
    assert "injected failure" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert snapshot(ns) == before


def test_bad_rendered_line_rolls_back(ns: NetNS, tmp_path: Path) -> None:
    """A rule file that the kernel rejects in the IPv6 step: IPv4 chain and routes are undone."""
    from metamock.netfilter import render

    before = snapshot(ns)
    original = render.read(render.IPT_IPV6)
    broken = tmp_path / "rules"
    broken.mkdir()
    for name in (render.IPT_IPV4, render.IPT_EXCLUDE_UID):
        (broken / name).write_text(render.read(name))
    (broken / render.IPT_IPV6).write_text(original.replace("REDIRECT", "NO-SUCH-TARGET"))
    code = (
        "import sys; from pathlib import Path; from metamock import netfilter; "
        "from metamock.netfilter import render; "
        f"render.read = lambda n: (Path({str(broken)!r}) / n).read_text(); "
        "netfilter.apply(1338, backend='iptables', environ={'PATH': '/usr/sbin:/usr/bin:/sbin:/bin'})"
    )

    done = ns.run([sys.executable, "-c", code], env=env())
    assert done.returncode != 0
    assert "NetfilterError" in done.stderr
    assert snapshot(ns) == before


def test_without_cap_net_admin_exit_2_and_nothing_changed(ns: NetNS) -> None:
    before = snapshot(ns)
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"]

    done = ns.run(
        [*drop, sys.executable, "-m", "metamock", "netfilter", "apply", "--port", "8338"],
        env=env(),
        cwd=Path.cwd(),
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "CAP_NET_ADMIN" in done.stderr
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:8338/" in done.stderr
    assert snapshot(ns) == before
    # Unprivileged, nobody can see whether rules exist (they may come from another container):
    # never "not applied" nor "nothing to remove".
    status = ns.run([*drop, sys.executable, "-m", "metamock", "netfilter", "status"], env=env())
    assert status.returncode == 2
    assert "cannot tell" in status.stdout
    assert "not applied" not in status.stdout
    remove = ns.run([*drop, sys.executable, "-m", "metamock", "netfilter", "remove"], env=env())
    assert remove.returncode == 2
    assert "CAP_NET_ADMIN" in remove.stderr
    assert "nothing to remove" not in remove.stdout + remove.stderr
    assert snapshot(ns) == before


DROP_NET_ADMIN = ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"]


def unprivileged(ns: NetNS, *args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`metamock ARGS` in the namespace as root without CAP_NET_ADMIN (like a Fargate container)."""
    return ns.run([*DROP_NET_ADMIN, sys.executable, "-m", "metamock", *args], env=environ, cwd=REPO)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_remove_and_status_without_cap_net_admin_after_apply(ns: NetNS, backend: str) -> None:
    """Applied as root, then asked without the capability: exit 2, the rules stay in place."""
    opts, environ = prepare(ns, backend)
    before = snapshot(ns)
    listen(ns, host="127.0.0.1")
    assert metamock(ns, "netfilter", "apply", *opts, env=environ).returncode == 0
    assert curl(ns, V4_URL).stdout == INSTANCE_ID
    applied = snapshot(ns)  # after the request: nft's listing carries packet counters

    remove = unprivileged(ns, "netfilter", "remove", environ=environ)
    assert remove.returncode == 2, remove.stdout + remove.stderr
    assert "CAP_NET_ADMIN" in remove.stderr
    assert "nothing to remove" not in remove.stdout + remove.stderr
    assert len(remove.stderr.strip().splitlines()) == 1
    assert snapshot(ns) == applied

    status = unprivileged(ns, "netfilter", "status", environ=environ)
    assert status.returncode == 2, status.stdout + status.stderr
    assert status.stdout.startswith("netfilter: cannot tell (without CAP_NET_ADMIN")
    assert "the record says: applied" in status.stdout
    assert "not applied" not in status.stdout

    assert curl(ns, V4_URL).stdout == INSTANCE_ID  # still redirected
    assert metamock(ns, "netfilter", "status", env=environ).returncode == 0
    done = metamock(ns, "netfilter", "remove", env=environ)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "netfilter removed"
    assert snapshot(ns) == before


def test_ipv6_disabled_namespace_gets_ipv4_only(ns: NetNS) -> None:
    """Docker turns IPv6 off in containers of IPv4-only networks; apply must still work there."""
    for scope in ("all", "default", "lo"):
        knob = f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"  # per namespace; no procps needed
        assert ns.run(["sh", "-c", f"echo 1 > {knob}"]).returncode == 0
    before = snapshot(ns)
    listen(ns, host="127.0.0.1")
    done = metamock(ns, "netfilter", "apply")
    assert done.returncode == 0, done.stderr
    assert "IPv6 is disabled" in done.stderr
    assert "[fd00:ec2::254]" not in done.stdout
    assert curl(ns, V4_URL).stdout == INSTANCE_ID
    assert metamock(ns, "netfilter", "remove").returncode == 0
    assert snapshot(ns) == before


def test_remove_without_state_file_still_cleans_up(ns: NetNS) -> None:
    """The state file lives in the container's /run; the namespace can outlive it."""
    before = snapshot(ns)
    listen(ns)
    assert metamock(ns, "netfilter", "apply").returncode == 0
    Path(f"/run/metamock/netfilter-{state_key(ns)}.json").unlink()
    status = metamock(ns, "netfilter", "status")
    assert status.returncode == 0
    assert "without a record" in status.stdout
    assert metamock(ns, "netfilter", "remove").returncode == 0
    assert snapshot(ns) == before


def test_switching_options_and_backends_keeps_one_copy(ns: NetNS) -> None:
    _, legacy = prepare(ns, "iptables-legacy")
    before = snapshot(ns)
    assert metamock(ns, "netfilter", "apply", "--backend", "iptables", env=legacy).returncode == 0
    assert metamock(ns, "netfilter", "apply", "--backend", "iptables").returncode == 0  # iptables-nft
    jumps = [line for line in ruleset(ns).splitlines() if line.startswith("-A OUTPUT ")]
    assert len(jumps) == 2, jumps  # IPv4 + IPv6 of one variant only
    assert metamock(ns, "netfilter", "apply", "--backend", "nft", "--no-ipv6").returncode == 0
    only_nft = ruleset(ns)
    assert "METAMOCK" not in only_nft
    assert "fd00:ec2::254" not in only_nft
    assert "fd00:ec2::254" not in ns.run(["ip", "-6", "route"]).stdout
    assert metamock(ns, "netfilter", "remove").returncode == 0
    assert snapshot(ns) == before
