"""netfilter for real, inside throwaway network namespaces: the redirect of every backend.

Each namespace starts with only `lo` and 169.254.170.2 on it (no IMDS routes), so apply must add
the routes; a stand-in server answers on [::]:1338 (test_netfilter_clients.py runs the real
`metamock serve`; test_netfilter_failures.py covers rollback and the unprivileged path).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netfilter_support import (
    BACKENDS,
    INSTANCE_ID,
    assert_golden,
    bare_netns,
    curl,
    listen,
    metamock,
    metamock_rules,
    prepare,
    ruleset,
    snapshot,
)
from tests.netns import NetNS

pytestmark = pytest.mark.root

V4_URL = "http://169.254.169.254/latest/meta-data/instance-id"
V6_URL = "http://[fd00:ec2::254]/latest/meta-data/instance-id"


@pytest.fixture
def ns() -> Iterator[NetNS]:
    with bare_netns() as space:
        yield space


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_apply_redirect_idempotent_status_and_clean_remove(ns: NetNS, backend: str) -> None:
    opts, environ = prepare(ns, backend)
    before = snapshot(ns)
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
    opts, environ = prepare(ns, backend)
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
    opts, environ = prepare(ns, backend)
    assert metamock(ns, "netfilter", "apply", *opts, env=environ).returncode == 0
    for url in (V4_URL, V6_URL):
        got = curl(ns, url)
        assert got.returncode == 7, got  # connection refused, at once: never another IMDS
        assert "Couldn't connect" in got.stderr
