"""Helpers for the netfilter tests: the CLI inside a namespace, listeners, curl, snapshots."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests import golden_files
from tests.conftest import REPO, make_netns
from tests.netns import NetNS

PORT = 1338
INSTANCE_ID = "i-0netfilterlisten0"
# (CLI --backend, METAMOCK_IPTABLES, name of the *-save binaries to snapshot)
BACKENDS = {
    "nft": ("nft", None),
    "iptables-nft": ("iptables", "iptables-nft"),
    "iptables-legacy": ("iptables", "iptables-legacy"),
}
_COUNTERS = re.compile(r"\[\d+:\d+\]")
_NONCE = re.compile(r"nonce=[0-9a-f]+")


@contextmanager
def bare_netns() -> Iterator[NetNS]:
    """A namespace with lo and 169.254.170.2 but no IMDS routes; drops its state file after."""
    space = make_netns(imds_routes=False)
    try:
        yield space
    finally:
        key = state_key(space)
        space.close()
        (Path("/run/metamock") / f"netfilter-{key}.json").unlink(missing_ok=True)


def state_key(ns: NetNS) -> str:
    """The namespace's `<dev>-<inode>`, as the record's file name carries it."""
    return ns.run(["stat", "-L", "-c", "%d-%i", "/proc/self/ns/net"]).stdout.strip()


def prepare(ns: NetNS, backend: str) -> tuple[list[str], dict[str, str]]:
    """CLI options and environment for `backend`; legacy tables exist as on a legacy host."""
    cli_backend, variant = BACKENDS[backend]
    if variant == "iptables-legacy":
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            assert ns.run([tool, "-w", "-t", "nat", "-S"]).returncode == 0
    return ["--backend", cli_backend], env(variant)


def env(variant: str | None = None, path_prefix: Path | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "METAMOCK_"))}
    if variant:
        out["METAMOCK_IPTABLES"] = variant
    if path_prefix is not None:
        out["PATH"] = f"{path_prefix}:{out.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return out


def metamock(ns: NetNS, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`metamock ARGS` inside the namespace."""
    kw.setdefault("env", env())
    kw.setdefault("cwd", REPO)
    return ns.run([sys.executable, "-m", "metamock", *args], **kw)


def listen(ns: NetNS, host: str = "::", port: int = PORT, body: str = INSTANCE_ID) -> None:
    """Start the stand-in server in the namespace and wait until it listens."""
    proc = ns.popen(
        [
            sys.executable,
            "-m",
            "tests.netfilter_listener",
            "--host",
            host,
            "--port",
            str(port),
            "--body",
            body,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.readline().strip() == b"ready", "listener did not start"


def curl(
    ns: NetNS, url: str, *, uid: int | None = None, timeout: float = 3
) -> subprocess.CompletedProcess[str]:
    argv = ["curl", "-sS", "-g", "--noproxy", "*", "-m", str(timeout), url]
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    return ns.run(argv)


def snapshot(ns: NetNS) -> dict[str, str]:
    """Everything apply may touch, as the tools print it (counters and timestamps dropped)."""
    commands = {
        "addr": ["ip", "addr"],
        "route": ["ip", "route", "show", "table", "all"],
        "route6": ["ip", "-6", "route", "show", "table", "all"],
        "nft": ["nft", "list", "ruleset"],
    }
    for tool in ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save"):
        commands[tool] = [tool]
    out = {}
    for name, argv in commands.items():
        done = ns.run(argv)
        text = done.stdout + done.stderr
        lines = [_COUNTERS.sub("[0:0]", line) for line in text.splitlines() if not line.startswith("# ")]
        out[name] = "\n".join(lines)
    return out


def ruleset(ns: NetNS) -> str:
    """The rule listings compared for idempotence: nft and both iptables flavours."""
    snap = snapshot(ns)
    return "\n".join(
        snap[k]
        for k in ("nft", "iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save")
    )


def metamock_rules(ns: NetNS, backend: str) -> str:
    """metamock's own rules as the backend's tool lists them: the text for the golden file."""
    if backend == "nft":
        return _NONCE.sub("nonce=N", ns.run(["nft", "list", "table", "inet", "metamock"]).stdout)
    variant = BACKENDS[backend][1]
    assert variant is not None
    saves = [variant.replace("iptables", "iptables") + "-save", "ip6" + variant[2:] + "-save"]
    lines = []
    for save in saves:
        lines.append(f"## {save} -t nat")
        lines += [
            _COUNTERS.sub("[0:0]", line)
            for line in ns.run([save, "-t", "nat"]).stdout.splitlines()
            if not line.startswith("#")
        ]
    return _NONCE.sub("nonce=N", "\n".join(lines) + "\n")


def assert_golden(name: str, actual: str) -> None:
    """The shared golden check, under tests/golden/netfilter/."""
    golden_files.assert_golden(f"netfilter/{name}", actual)
