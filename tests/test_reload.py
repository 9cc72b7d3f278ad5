"""Hot reload: SIGHUP and --watch-config swap the tree atomically; a bad config is rejected and the old kept."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from metamock.imds.tree import Tree
from tests.scenarios_support import fetch, get
from tests.servers import running_service, serve

TAGS = [f"t{n}" for n in range(5)]


def versioned(n: int) -> str:
    """Config version `n`: five tags and an extra path carrying n, one parity tag (never both)."""
    tags = "".join(f'{t} = "{n}"\n' for t in TAGS)
    parity = "even" if n % 2 == 0 else "odd"
    return f'[tags]\n{tags}parity-{parity} = "{n}"\n[meta-data]\n"metamock/version" = "{n}"\n'


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def allowed_listing(body: str) -> bool:
    names = body.split("\n")
    return sorted(names) in (sorted([*TAGS, "parity-even"]), sorted([*TAGS, "parity-odd"]))


def listings_resolve(tree: Tree) -> None:
    """Every entry of every directory listing resolves in the same tree."""
    for path in tree.paths():
        node = tree.get(path)
        assert node is not None
        if node.is_dir:
            for entry in node.body.decode().split("\n"):
                if entry:
                    child = f"{path}/{entry.rstrip('/')}" if path else entry.rstrip("/")
                    assert tree.get(child) is not None, f"{child} listed but missing"


def consistent(tree: Tree) -> int:
    """Check one tree: listings resolve, and every versioned value is the same n; return n."""
    listings_resolve(tree)
    values = {tree.get(f"meta-data/tags/instance/{t}").body for t in TAGS}  # type: ignore[union-attr]
    values.add(tree.get("meta-data/metamock/version").body)  # type: ignore[union-attr]
    assert len(values) == 1, values
    assert allowed_listing(tree.get("meta-data/tags/instance").body.decode())  # type: ignore[union-attr]
    return int(values.pop())


async def test_reload_swaps_whole_trees_and_rejects_a_bad_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_service(tmp_path, config=versioned(0)) as service, aiohttp.ClientSession() as s:
        trees: list[Tree] = []
        service.on_rebuild.append(trees.append)
        config = tmp_path / "metamock.toml"
        for n in range(1, 6):
            write_atomically(config, versioned(n))
            assert service.reload_config()
        assert [consistent(t) for t in trees] == [1, 2, 3, 4, 5]
        assert await fetch(s, service.port, "meta-data/metamock/version") == (200, "5")

        for bad in ("[tags]\nt0 = 3\n", "[tags\n", '[scenarios.spot]\naction = "melt"\n', "[nonsense]\n"):
            write_atomically(config, bad)
            with caplog.at_level(logging.ERROR, logger="metamock.service"):
                caplog.clear()
                assert not service.reload_config()
            assert "config reload rejected, keeping the previous one" in caplog.text
            assert consistent(service.tree) == 5
        config.unlink()
        assert not service.reload_config()
        assert await fetch(s, service.port, "meta-data/tags/instance/t0") == (200, "5")
        write_atomically(config, versioned(6))
        assert service.reload_config()
        assert await fetch(s, service.port, "meta-data/tags/instance/t0") == (200, "6")


async def test_reload_brings_new_scenarios_and_keeps_unchanged_ones(tmp_path: Path) -> None:
    async with running_service(tmp_path, config="[scenarios.rebalance]\ndelay = 3600\n") as service:
        first = service.next_scenario_change
        config = tmp_path / "metamock.toml"
        write_atomically(config, '[scenarios.rebalance]\ndelay = 3600\n[scenarios.spot]\naction = "stop"\n')
        assert service.reload_config()
        assert service.next_scenario_change == first  # the rebalance kept its start
        assert service.tree.get("meta-data/spot/instance-action") is not None
        write_atomically(config, "")
        assert service.reload_config()
        assert service.tree.get("meta-data/spot") is None
        assert service.next_scenario_change is None


async def test_watch_config_follows_renames_and_rewrites_and_survives_deletion(tmp_path: Path) -> None:
    async with running_service(tmp_path, config=versioned(0), watch_config=True) as service:
        config = tmp_path / "metamock.toml"

        async def version_soon(expected: int) -> None:
            for _ in range(50):
                if service.tree.get("meta-data/metamock/version").body == str(expected).encode():  # type: ignore[union-attr]
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"version {expected} never served")

        write_atomically(config, versioned(1))  # editor style: new inode
        await version_soon(1)
        config.write_text(versioned(2))  # in place: same inode, new size/mtime
        await version_soon(2)
        config.unlink()
        await asyncio.sleep(0.3)
        assert consistent(service.tree) == 2
        write_atomically(config, versioned(3))
        await version_soon(3)


async def test_extra_interfaces_tags_and_paths_from_config(tmp_path: Path) -> None:
    config = """
    [[interfaces]]
    mac = "0a:00:00:00:00:02"
    IPv4Addresses = ["10.0.1.5"]
    subnet-id = "subnet-0123456789abcdef0"
    [[interfaces]]
    mac = "0a:00:00:00:00:03"
    [tags]
    Name = "web-1"
    team = "platform"
    [meta-data]
    "custom/deep/path" = "hello"
    "custom/json" = { a = 1 }
    "instance-life-cycle" = "spot"
    "ami-launch-index" = false
    "network/interfaces/macs/0a:00:00:00:00:03/public-ipv4s" = "203.0.113.9"
    """
    async with running_service(tmp_path, config=config) as service, aiohttp.ClientSession() as s:
        port = service.port
        macs = (await fetch(s, port, "meta-data/network/interfaces/macs/"))[1].split("\n")
        assert macs == ["02:b7:20:19:72:39/", "0a:00:00:00:00:02/", "0a:00:00:00:00:03/"]
        second = "meta-data/network/interfaces/macs/0a:00:00:00:00:02/"
        assert await fetch(s, port, second + "device-number") == (200, "1")
        assert await fetch(s, port, second + "local-ipv4s") == (200, "10.0.1.5")
        assert await fetch(s, port, second + "subnet-id") == (200, "subnet-0123456789abcdef0")
        third = "meta-data/network/interfaces/macs/0a:00:00:00:00:03/"
        assert await fetch(s, port, third + "device-number") == (200, "2")
        assert await fetch(s, port, third + "public-ipv4s") == (200, "203.0.113.9")
        assert "public-ipv4s" in (await fetch(s, port, third))[1].split("\n")
        assert await fetch(s, port, "meta-data/tags/instance") == (200, "Name\nteam")
        assert await fetch(s, port, "meta-data/tags/instance/Name") == (200, "web-1")
        assert await fetch(s, port, "meta-data/custom/") == (200, "deep/\njson")
        assert await fetch(s, port, "meta-data/custom/deep/path") == (200, "hello")
        assert await fetch(s, port, "meta-data/custom/json") == (200, '{\n  "a": 1\n}')
        assert await fetch(s, port, "meta-data/instance-life-cycle") == (200, "spot")
        assert (await fetch(s, port, "meta-data/ami-launch-index"))[0] == 404
        listing = (await fetch(s, port, "meta-data/"))[1].split("\n")
        assert "ami-launch-index" not in listing
        assert "custom/" in listing
        assert "tags/" in listing
        listings_resolve(service.tree)


def test_sighup_under_concurrent_load_never_mixes_versions(tmp_path: Path) -> None:
    """200 wrk connections + 50 checking clients for 3 s against a real `serve`, 20 SIGHUP reloads
    meanwhile: not one error, not one listing that mixes versions, no client ever going back."""
    config = tmp_path / "metamock.toml"
    config.write_text(versioned(0))
    with serve(
        "--config", str(config), "--stop-notice", "0", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as server:
        port, proc = server.port, server.proc
        wrk = _start_wrk(port, connections=200, seconds=3)
        stats = asyncio.run(_load(port, proc.pid, config, clients=50, seconds=3.0, reloads=20))
        wrk_out = wrk.communicate(timeout=30)[0].decode() if wrk else ""
        write_atomically(config, '[tags]\nt0 = "21"\n[scenarios.spot]\ndelay = "later"\n')
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert get(port, "meta-data/tags/instance/t0") == (200, "20")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        log = proc.stdout.read() if proc.stdout else ""
    assert stats["errors"] == [], stats["errors"][:5]
    assert stats["requests"] > 100  # the checkers ran all along (wrk brings the volume)
    # Signals coalesce and a reload that finds the file already read is a no-op, so up to 20.
    assert 5 <= log.count("config reloaded from") <= 20
    assert len(stats["versions"]) >= 5  # the checking clients saw the versions change under them
    assert log.count("config reload rejected, keeping the previous one") == 1
    assert "config scenarios.spot.delay" in log
    assert stats["last_version"] == 20
    wrk_requests = 0
    if wrk is not None:
        assert wrk.returncode == 0, wrk_out
        assert "Non-2xx" not in wrk_out, wrk_out
        assert "Socket errors" not in wrk_out, wrk_out
        wrk_requests = int(re.search(r"(\d+) requests in", wrk_out).group(1))  # type: ignore[union-attr]
    print(
        f"\nreload under load: wrk {wrk_requests} + checkers {stats['requests']} requests in 3 s, "
        f"20 SIGHUPs, {log.count('config reloaded from')} reloads, "
        f"{len(stats['versions'])} versions seen, 0 errors"
    )


def _start_wrk(port: int, *, connections: int, seconds: int) -> subprocess.Popen[bytes] | None:
    """wrk on the tags listing, when installed (it loads far harder than Python clients can)."""
    if shutil.which("wrk") is None:
        return None
    url = f"http://127.0.0.1:{port}/latest/meta-data/tags/instance"
    argv = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s", url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def _load(
    port: int, pid: int, config: Path, *, clients: int, seconds: float, reloads: int
) -> dict[str, Any]:
    errors: list[str] = []
    versions: set[int] = set()
    requests = 0
    stop = time.monotonic() + seconds
    base = f"http://127.0.0.1:{port}/latest/meta-data"

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal requests
        seen = 0
        while time.monotonic() < stop:
            try:
                async with session.get(f"{base}/tags/instance") as resp:
                    listing = await resp.text()
                    if resp.status != 200 or not allowed_listing(listing):
                        errors.append(f"listing {resp.status} {listing!r}")
                for entry in ("t0", "metamock/version" if requests % 2 else "t3"):
                    path = f"tags/instance/{entry}" if entry.startswith("t") else entry
                    async with session.get(f"{base}/{path}") as resp:
                        value = await resp.text()
                        if resp.status != 200:
                            errors.append(f"{path} {resp.status}")
                        elif int(value) < seen:
                            errors.append(f"{path} went back from {seen} to {value}")
                        else:
                            seen = int(value)
                            versions.add(seen)
                requests += 3
            except (aiohttp.ClientError, ValueError) as exc:
                errors.append(repr(exc))

    async def reloader() -> None:
        interval = seconds / (reloads + 1)
        for n in range(1, reloads + 1):
            await asyncio.sleep(interval)
            write_atomically(config, versioned(n))
            os.kill(pid, signal.SIGHUP)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(reloader(), *(client(session) for _ in range(clients)))
    await asyncio.sleep(0.2)
    last = int(get(port, "meta-data/metamock/version")[1])
    return {"errors": errors, "requests": requests, "last_version": last, "versions": versions}
