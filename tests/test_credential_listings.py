"""Every listed entry resolves at every instant, the credentials' expiry included.

A real server (in process, on a loopback port) with a ManualClock: the whole tree is walked over
HTTP (every listing, every entry) at instants before, at and after the expiry; and the tree the
server answers from is walked at a fine grid of instants around it. Without valid credentials
there is no `iam/` at all, as on an EC2 instance without a role.
"""

from __future__ import annotations

import pytest

from metamock.clock import ManualClock
from metamock.imds.tree import Tree
from metamock.settings import ConfigFile
from tests.httpraw import request
from tests.imds_fixtures import fixture_credentials, fixture_source
from tests.servers import running_service

ROLE = "meta-data/iam/security-credentials/example-task-role"
IAM = ("meta-data/iam", "meta-data/iam/info", "meta-data/iam/security-credentials", ROLE)


async def walk_http(port: int) -> tuple[list[tuple[str, int]], set[str]]:
    """GET every listing and entry under /latest/meta-data/: (what did not answer 200, every path)."""
    problems: list[tuple[str, int]] = []
    seen: set[str] = set()
    todo = ["meta-data/"]
    while todo:
        directory = todo.pop()
        resp = await request(port, "GET", f"/latest/{directory}")
        if resp.status != 200:
            problems.append((directory, resp.status))
            continue
        for name in resp.body.decode().split("\n"):
            path = directory + name
            seen.add(path.rstrip("/"))
            if name.endswith("/"):
                todo.append(path)
            elif (status := (await request(port, "GET", f"/latest/{path}")).status) != 200:
                problems.append((path, status))
    return problems, seen


def walk_tree(tree: Tree, now: float) -> list[str]:
    """What a listing names but does not resolve at `now` (the handler's own expiry rule)."""
    view = tree.at(now)
    problems = []
    for path in view.paths():
        node = view.get(path)
        assert node is not None
        if not node.is_dir:
            continue
        for name in node.body.decode().split("\n"):
            child = view.get(f"{path}/{name}".lstrip("/").rstrip("/"))
            if child is None or (child.expires is not None and now >= child.expires):
                problems.append(f"{path}/{name}")
    return problems


@pytest.mark.parametrize("offset", [-60.0, -0.001, 0.0, 0.001, 60.0])
async def test_the_whole_tree_resolves_around_the_expiry(offset: float) -> None:
    clock = ManualClock(start=1_800_000_000)
    creds = fixture_credentials(now=clock.time(), lifetime=600)
    async with running_service(clock=clock, source=fixture_source(creds)) as svc:
        clock.advance(creds.expiration - clock.time() + offset)
        problems, seen = await walk_http(svc.port)
        assert problems == []
        valid = offset < 0
        assert (ROLE in seen) is valid
        for path in IAM:  # listed or not, each answers as the listing says
            status = (await request(svc.port, "GET", f"/latest/{path}")).status
            assert status == (200 if valid else 404), path


async def test_the_served_tree_is_consistent_at_every_instant_near_the_expiry() -> None:
    clock = ManualClock(start=1_800_000_000)
    creds = fixture_credentials(now=clock.time(), lifetime=600)
    async with running_service(clock=clock, source=fixture_source(creds)) as svc:
        exp = creds.expiration
        for step in range(-100, 101):
            now = exp + step * 1e-4
            assert walk_tree(svc.tree, now) == [], now
            view = svc.tree.at(now)
            assert {view.get(p) is not None for p in IAM} == {now < exp}, now


async def test_with_a_role_name_but_no_credentials_there_is_no_iam() -> None:
    # It used to list iam/info (200) while the role path answered 404.
    config = ConfigFile.from_mapping({"iam": {"role-name": "pod-role"}})
    async with running_service(config=config, source=fixture_source(None)) as svc:
        problems, seen = await walk_http(svc.port)
        assert problems == []
        assert not any(p.startswith("meta-data/iam") for p in seen)
        assert (await request(svc.port, "GET", "/latest/meta-data/iam/info")).status == 404
