"""netfilter for real, inside throwaway network namespaces: every backend, every promise.

Each namespace starts with only `lo` and 169.254.170.2 on it (no IMDS routes), so apply must add
the routes; a stand-in server answers on [::]:1338 until the real-client tests in
test_netfilter_clients.py run `metamock serve`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NetNS, make_netns
from tests.netfilter_support import (
    BACKENDS,
    INSTANCE_ID,
    assert_golden,
    curl,
    env,
    listen,
    metamock,
    metamock_rules,
    ruleset,
    snapshot,
)

pytestmark = pytest.mark.root

V4_URL = "http://169.254.169.254/latest/meta-data/instance-id"
V6_URL = "http://[fd00:ec2::254]/latest/meta-data/instance-id"


@pytest.fixture
def ns() -> Iterator[NetNS]:
    space = make_netns(imds_routes=False)
    try:
        yield space
    finally:
        state = Path("/run/metamock")
        ino = space.run(["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).stdout.strip()
        space.close()
        (state / f"netfilter-{ino}.json").unlink(missing_ok=True)


def _prepare(ns: NetNS, backend: str) -> tuple[list[str], dict[str, str]]:
    """CLI options and environment for `backend`; legacy tables exist as on a legacy host."""
    cli_backend, variant = BACKENDS[backend]
    if variant == "iptables-legacy":
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            assert ns.run([tool, "-w", "-t", "nat", "-S"]).returncode == 0
    return ["--backend", cli_backend], env(variant)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_apply_redirect_idempotent_status_and_clean_remove(ns: NetNS, backend: str) -> None:
    opts, environ = _prepare(ns, backend)
    before = snapshot(ns)
    assert metamock(ns, "netfilter", "status", env=environ).returncode == 1
    listen(ns)

    first = metamock(ns, "netfilter", "apply", *opts, env=environ)
    assert first.returncode == 0, first.stderr
    assert f"backend {BACKENDS[backend][0]}" in first.stdout
    once = ruleset(ns)
    again = metamock(ns, "netfilter", "apply", *opts, env=environ)
    assert again.returncode == 0, again.stderr
    assert ruleset(ns) == once, "a second apply changed the ruleset"
    assert_golden(f"listing-{backend}.txt", metamock_rules(ns, backend))

    for url in (V4_URL, V6_URL):
        got = curl(ns, url)
        assert (got.returncode, got.stdout) == (0, INSTANCE_ID), got.stderr
    routes = ns.run(["ip", "route"]).stdout + ns.run(["ip", "-6", "route"]).stdout
    assert "169.254.169.254 dev lo proto 109 scope link src 127.0.0.1" in routes
    assert "fd00:ec2::254 dev lo proto 109" in routes

    status = metamock(ns, "netfilter", "status", env=environ)
    assert status.returncode == 0
    assert f"applied (backend {BACKENDS[backend][0]})" in status.stdout

    removed = metamock(ns, "netfilter", "remove", env=environ)
    assert removed.returncode == 0, removed.stderr
    assert snapshot(ns) == before
    assert metamock(ns, "netfilter", "status", env=environ).returncode == 1
    assert metamock(ns, "netfilter", "remove", env=environ).returncode == 0  # nothing applied: fine
    assert snapshot(ns) == before


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_exclude_uid_reaches_the_real_address(ns: NetNS, backend: str) -> None:
    opts, environ = _prepare(ns, backend)
    # Something else answers on 169.254.169.254:80 itself (a stand-in for the real IMDS).
    assert ns.run(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]).returncode == 0
    listen(ns, host="169.254.169.254", port=80, body="the-real-imds")
    listen(ns)
    done = metamock(ns, "netfilter", "apply", *opts, "--no-ipv6", "--exclude-uid", "4321", env=environ)
    assert done.returncode == 0, done.stderr
    assert curl(ns, V4_URL, uid=4321).stdout == "the-real-imds"
    assert curl(ns, V4_URL, uid=4322).stdout == INSTANCE_ID
    assert curl(ns, V4_URL).stdout == INSTANCE_ID
    assert "not redirected for uid 4321" in metamock(ns, "netfilter", "status", env=environ).stdout


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_fails_closed_when_server_is_down(ns: NetNS, backend: str) -> None:
    opts, environ = _prepare(ns, backend)
    assert metamock(ns, "netfilter", "apply", *opts, env=environ).returncode == 0
    for url in (V4_URL, V6_URL):
        got = curl(ns, url)
        assert got.returncode == 7, got  # connection refused, at once: never another IMDS
        assert "Couldn't connect" in got.stderr


def _fake_tool(directory: Path, name: str, script: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_failure_in_the_middle_leaves_nothing(ns: NetNS, backend: str, tmp_path: Path) -> None:
    _, variant = BACKENDS[backend]
    opts, _ = _prepare(ns, backend)
    if variant is None:  # nft: everything works until the one transaction fails
        real = subprocess.run(["which", "nft"], capture_output=True, text=True, check=True).stdout.strip()
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
    assert metamock(ns, "netfilter", "status", env=env(variant)).returncode == 1


def test_bad_rendered_line_rolls_back(ns: NetNS, tmp_path: Path) -> None:
    """A rule file that the kernel rejects in the IPv6 step: IPv4 chain and routes are undone."""
    from metamock.netfilter import render  # noqa: PLC0415

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
    import sys  # noqa: PLC0415

    done = ns.run([sys.executable, "-c", code], env=env())
    assert done.returncode != 0
    assert "NetfilterError" in done.stderr
    assert snapshot(ns) == before


def test_without_cap_net_admin_exit_2_and_nothing_changed(ns: NetNS) -> None:
    before = snapshot(ns)
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"]
    import sys  # noqa: PLC0415

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
    status = ns.run([*drop, sys.executable, "-m", "metamock", "netfilter", "status"], env=env())
    assert status.returncode == 1
    remove = ns.run([*drop, sys.executable, "-m", "metamock", "netfilter", "remove"], env=env())
    assert remove.returncode == 0  # nothing applied: nothing to do, even unprivileged


def test_remove_without_state_file_still_cleans_up(ns: NetNS) -> None:
    """The state file lives in the container's /run; the namespace can outlive it."""
    before = snapshot(ns)
    assert metamock(ns, "netfilter", "apply").returncode == 0
    ino = ns.run(["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).stdout.strip()
    Path(f"/run/metamock/netfilter-{ino}.json").unlink()
    status = metamock(ns, "netfilter", "status")
    assert status.returncode == 0
    assert "without a record" in status.stdout
    assert metamock(ns, "netfilter", "remove").returncode == 0
    assert snapshot(ns) == before


def test_switching_options_and_backends_keeps_one_copy(ns: NetNS) -> None:
    before = snapshot(ns)
    assert metamock(ns, "netfilter", "apply", "--backend", "iptables").returncode == 0
    assert metamock(ns, "netfilter", "apply", "--backend", "nft", "--no-ipv6").returncode == 0
    only_nft = ruleset(ns)
    assert "METAMOCK" not in only_nft
    assert "fd00:ec2::254" not in only_nft
    assert "fd00:ec2::254" not in ns.run(["ip", "-6", "route"]).stdout
    assert metamock(ns, "netfilter", "remove").returncode == 0
    assert snapshot(ns) == before
