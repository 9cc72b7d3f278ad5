"""`metamock run -- CMD` as typed, as root and as uid 65534, each inside a test namespace with only
`lo`: unmodified clients reach the hard-coded addresses, ids, exit codes, signals, hermetic unless
--egress, the one-line errors, and nothing left behind."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, make_netns, require
from tests.netns import REPO, NetNS
from tests.run_support import USERS, User, as_user, in_ns, left_in_tmp, run_in, send, start_in, wait_gone

INSTANCE_ID = re.compile(r"^i-[0-9a-f]{17}$")
BASE = "http://169.254.169.254/latest"


@pytest.fixture
def ns() -> Iterator[NetNS]:
    """A bare test namespace: only `lo`, no route to any IMDS address (run must make its own)."""
    space = make_netns(ecs_shaped=False)
    try:
        yield space
    finally:
        space.close()


@pytest.fixture(params=USERS)
def user(request: pytest.FixtureRequest) -> Iterator[User]:
    with as_user(request.param) as who:
        yield who


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory uid 65534 can read (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mm-run-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def marker() -> str:
    return f"mm-marker-{uuid.uuid4().hex[:8]}"


def in_namespace(ns: NetNS) -> list[str]:
    """The processes in the test namespace: after a run, none (the run's own are in namespaces
    below it, found by their mark)."""
    pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=True)
    return [Path(f"/proc/{pid}/cmdline").read_text(errors="replace") for pid in pids.stdout.split()]


def assert_clean(mark: str, user: User, ns: NetNS) -> None:
    assert wait_gone(mark) == [], "processes left behind"
    assert in_namespace(ns) == [], "processes left behind"
    assert left_in_tmp(user) == [], "run directory left behind"


# ---- what the command sees -------------------------------------------------------------------

CLIENTS = """
set -u
echo "uid=$(id -u) gid=$(id -g)"
echo "endpoint-var=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-none}"
echo "v1=$(curl -sS -m 5 BASE/meta-data/instance-id)"
token=$(curl -sS -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' BASE/api/token)
echo "v2=$(curl -sS -m 5 -H "X-aws-ec2-metadata-token: $token" BASE/meta-data/instance-id)"
echo "v6=$(curl -sS -m 5 'http://[fd00:ec2::254]/latest/meta-data/instance-id')"
echo "ec2-metadata=$(ec2-metadata -i)"
echo "boto3=$(PYTHON -c 'import boto3; c = boto3.Session().get_credentials(); print(c.method)')"
echo "nft=$(/usr/sbin/nft list ruleset >/dev/null 2>&1 && echo allowed || echo refused)"
""".replace("BASE", BASE)


def test_unmodified_clients_see_ec2(ns: NetNS, user: User) -> None:
    """curl (IMDSv1, IMDSv2 by hand, IPv6), Debian's ec2-metadata and boto3's default chain reach
    the hard-coded addresses with no endpoint variable; the command has the caller's own uid and
    cannot touch the rules."""
    mark = marker()
    script = CLIENTS.replace("PYTHON", user.python)
    done = run_in(ns, user, "run", "--", "sh", "-c", script, mark, timeout=90)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert seen["uid"].split()[0] == str(user.uid)
    assert seen["endpoint-var"] == "none"
    assert INSTANCE_ID.match(seen["v1"]), seen
    assert seen["v2"] == seen["v1"] == seen["v6"]
    assert seen["ec2-metadata"] == f"instance-id: {seen['v1']}"
    assert seen["boto3"].split()[0] == "iam-role", seen["boto3"]
    if user.name == "nobody":
        assert seen["nft"] == "refused"  # no capability over the server's network namespace
    assert_clean(mark, user, ns)


def test_serve_options_apply_inside(ns: NetNS, user: User, shared_dir: Path) -> None:
    """--tokens required (IMDSv1 refused, IMDSv2 served), --config (an instance id of the user's),
    --task-metadata (the task's region) and --access-log (stderr) reach the server in the run."""
    config = shared_dir / "metamock.toml"
    config.write_text('[meta-data]\n"instance-id" = "i-0123456789abcdef0"\n', encoding="utf-8")
    config.chmod(0o644)
    task = shared_dir / "task.json"
    task.write_bytes((FIXTURES / "fargate-task.json").read_bytes())
    task.chmod(0o644)
    script = f"""
    echo "v1=$(curl -s -o /dev/null -w '%{{http_code}}' {BASE}/meta-data/instance-id)"
    token=$(curl -sS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' {BASE}/api/token)
    echo "id=$(curl -sS -H "X-aws-ec2-metadata-token: $token" {BASE}/meta-data/instance-id)"
    echo "region=$(curl -sS -H "X-aws-ec2-metadata-token: $token" {BASE}/meta-data/placement/region)"
    """
    done = run_in(
        ns, user, "run", "--tokens", "required", "--config", str(config), "--task-metadata", str(task),
        "--access-log", "--", "sh", "-c", script,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)
    assert seen == {"v1": "401", "id": "i-0123456789abcdef0", "region": "us-west-2"}, done.stdout
    assert "/latest/meta-data/placement/region" in done.stderr  # the access log, on stderr


def test_status_and_trigger_inside_find_the_server(ns: NetNS, user: User) -> None:
    """`metamock status` in the command reaches the run's server (METAMOCK_RUN_DIR) and reports the
    redirect verified (the rule in the kernel, a token round trip through 169.254.169.254);
    `metamock trigger spot` there starts the notice the command then reads."""
    script = (
        f"{user.python} -m metamock status && {user.python} -m metamock trigger spot >/dev/null && "
        f"echo spot=$(curl -s -m 5 {BASE}/meta-data/spot/instance-action)"
    )
    done = run_in(ns, user, "run", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r'^spot=\{"action": "terminate", "time": ', done.stdout, re.M), done.stdout
    assert re.search(r"^redirect +working", done.stdout, re.M), done.stdout
    assert "connection verified: 169.254.169.254:80 reaches the server" in done.stdout
    assert "without a record" not in done.stdout  # the record is where the server wrote it


# ---- exit codes and signals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 0", 0), ("exit 7", 7), ("kill -KILL $$", 137), ("exec no-such-command-here", 127)],
)
def test_exit_code_is_the_commands(ns: NetNS, script: str, code: int) -> None:
    with as_user("nobody") as user:
        done = run_in(ns, user, "run", "--", "sh", "-c", script)
    assert done.returncode == code, done.stderr


def test_missing_command_is_127_with_one_line(ns: NetNS, user: User, shared_dir: Path) -> None:
    """Looked up as a shell does: a PATH directory the user may not search does not turn "not
    found" into "permission denied" (126)."""
    closed = shared_dir / "closed"
    closed.mkdir(mode=0o700)
    user.env["PATH"] = f"{closed}:{user.env['PATH']}"
    done = run_in(ns, user, "run", "--", "no-such-command-here")
    closed.rmdir()
    assert done.returncode == 127, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "metamock run: no-such-command-here: command not found"


def test_quiet_unless_asked(ns: NetNS, user: User) -> None:
    """The server says nothing on the command's stderr by default (warnings only), not even the
    libraries' INFO lines (botocore's "Found credentials"), and --log-level error holds for them."""
    user.env.update(AWS_ACCESS_KEY_ID="AKIAEXAMPLEEXAMPLE00", AWS_SECRET_ACCESS_KEY="example-secret")
    for args in ((), ("--log-level", "error")):
        done = run_in(ns, user, "run", *args, "--", "sh", "-c", "echo out; echo err >&2")
        assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1]
)
def test_signals_sent_to_run_reach_the_command(ns: NetNS, user: User, signum: signal.Signals) -> None:
    """A signal sent to `metamock run` itself (kill(1), a CI runner's SIGTERM) goes to the command,
    which here exits 42 on it; then nothing is left, the background child it started included."""
    mark = marker()
    name = signum.name.removeprefix("SIG")
    background = f"/usr/bin/python3 -c 'import time; time.sleep(300)' {mark}-child &"
    script = f'{background} trap "echo got-{name}; exit 42" {name}; echo ready; while :; do sleep 0.05; done # {mark}'
    proc = start_in(ns, user, "run", "--", "sh", "-c", script, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    send(proc, signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 42, err
    assert out.strip() == f"got-{name}"
    assert_clean(mark, user, ns)  # the background child included: it carries the mark too


def test_sigterm_to_a_command_that_dies_of_it_gives_143(ns: NetNS, user: User) -> None:
    proc = start_in(ns, user, "run", "--", "sh", "-c", "echo ready; exec sleep 300", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    send(proc, signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM


def test_ctrl_c_at_the_terminal_reaches_the_command_once(ns: NetNS, user: User) -> None:
    """On a real terminal, Ctrl-C is the terminal's SIGINT to its foreground group: the command is
    in it and gets it once (metamock relays only signals sent to it in person); Ctrl-C then ends
    `metamock run` with the command's code."""
    counter = (
        "import signal, sys, time\n"
        "seen = []\n"
        "signal.signal(signal.SIGINT, lambda *a: seen.append(1))\n"
        "print('ready', flush=True)\n"
        "deadline = time.monotonic() + 20\n"
        "while not seen and time.monotonic() < deadline: time.sleep(0.02)\n"
        "time.sleep(1.0)\n"
        "sys.exit(10 + len(seen))\n"
    )
    master, slave = os.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        in_ns(ns, user.argv("run", "--", "/usr/bin/python3", "-c", counter)),
        env=user.env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=controlling_terminal,  # noqa: PLW1509 (a pty's session, in the child)
    )  # fmt: skip
    ns.procs.append(proc)
    os.close(slave)
    try:
        output = b""
        deadline = time.monotonic() + 30
        while b"ready" not in output and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    output += os.read(master, 4096)
                except OSError:  # EIO: every slave end closed, the run is over
                    break
        assert b"ready" in output, output
        os.write(master, b"\x03")  # Ctrl-C, as typed
        assert proc.wait(timeout=30) == 11, output  # exactly one SIGINT
    finally:
        os.close(master)


def test_sigkill_of_run_takes_the_server_and_command_along(ns: NetNS, user: User) -> None:
    """Nothing can clean up after SIGKILL, but nothing should outlive it either: the server and the
    command die with `metamock run` (parent-death signals)."""
    mark = marker()
    proc = start_in(
        ns, user, "run", "--", "sh", "-c", f"echo ready; exec sleep 300 # {mark}", stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    send(proc, signal.SIGKILL)
    proc.wait(timeout=10)
    assert wait_gone(mark) == []


# ---- network: hermetic unless --egress ---------------------------------------------------------


@pytest.fixture
def outside() -> Iterator[tuple[NetNS, str]]:
    """A test namespace with a veth to a peer namespace that serves HTTP on 10.201.0.1:8080: an
    address that exists only there. Yields the namespace `metamock run` starts in, and the URL."""
    here = make_netns(ecs_shaped=False)
    peer = make_netns(ecs_shaped=False)
    try:
        veth = f"mmv{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "link", "add", veth, "netns", here.name, "type", "veth", "peer", "name", "p0",
                        "netns", peer.name], check=True)  # fmt: skip
        for space, addr, dev in ((here, "10.200.0.1/24", veth), (peer, "10.200.0.2/24", "p0")):
            subprocess.run(space.cmd(["ip", "addr", "add", addr, "dev", dev]), check=True)
            subprocess.run(space.cmd(["ip", "link", "set", dev, "up"]), check=True)
        subprocess.run(here.cmd(["ip", "route", "add", "default", "via", "10.200.0.2"]), check=True)
        subprocess.run(peer.cmd(["ip", "addr", "add", "10.201.0.1/32", "dev", "lo"]), check=True)
        peer.popen(["/usr/bin/python3", "-m", "http.server", "-b", "10.201.0.1", "8080"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")  # fmt: skip
        url = "http://10.201.0.1:8080/"
        deadline = time.monotonic() + 10
        while here.run(["curl", "-s", "-o", "/dev/null", "-m", "1", url]).returncode != 0:
            assert time.monotonic() < deadline, "the peer's server did not come up"
            time.sleep(0.1)
        yield here, url
    finally:
        here.close()
        peer.close()


PROBE = (
    'echo "out=$(curl -s -m 3 -o /dev/null -w %{http_code} URL)"; echo "id=$(curl -s -m 3 '
    + BASE
    + '/meta-data/instance-id)"'
)


def tools_dir(shared: Path, *, without: str | tuple[str, ...]) -> str:
    """A PATH directory with the tools a run needs, minus `without` (to pick the egress tool)."""
    without = (without,) if isinstance(without, str) else without
    for tool in (
        "sh",
        "curl",
        "nft",
        "iptables",
        "ip",
        "setpriv",
        "unshare",
        "mount",
        "mknod",
        "pasta",
        "slirp4netns",
    ):
        found = subprocess.run(
            ["sh", "-c", f"command -v {tool}"], capture_output=True, text=True, check=False
        )
        if tool not in without and found.returncode == 0:
            (shared / tool).symlink_to(found.stdout.strip())
    return str(shared)


def test_hermetic_without_egress(outside: tuple[NetNS, str], user: User) -> None:
    here, url = outside
    done = run_in(here, user, "run", "--", "sh", "-c", PROBE.replace("URL", url))
    assert done.returncode == 0, done.stderr
    assert "out=000" in done.stdout  # the peer is reachable from `here`, not from the run
    assert re.search(r"id=i-[0-9a-f]{17}", done.stdout)


@pytest.mark.parametrize("tool", ["pasta", "slirp4netns"])
def test_egress_reaches_outside(outside: tuple[NetNS, str], user: User, tool: str, shared_dir: Path) -> None:
    """--egress: the command reaches an address outside (and the metadata still comes from the
    run's server); the user-mode stack is gone afterwards."""
    require(subprocess.run(["sh", "-c", f"command -v {tool}"], check=False).returncode == 0, f"needs {tool}")
    here, url = outside
    other = "slirp4netns" if tool == "pasta" else "pasta"
    user.env["PATH"] = tools_dir(shared_dir, without=other) + ":" + str(Path(user.python).parent)
    done = run_in(here, user, "run", "--egress", "--", "sh", "-c", PROBE.replace("URL", url))
    if user.name == "root" and tool == "pasta":
        assert done.returncode == 2
        assert (
            done.stderr.strip()
            .splitlines()[-1]
            .startswith("metamock run: --egress as root needs slirp4netns")
        )
        return
    assert done.returncode == 0, done.stderr
    assert "out=200" in done.stdout, done.stdout + done.stderr
    assert re.search(r"id=i-[0-9a-f]{17}", done.stdout)
    assert in_namespace(here) == [], f"{tool} left running"  # it runs where `metamock run` does
    assert left_in_tmp(user) == []


# ---- one line and exit 2 -----------------------------------------------------------------------


def assert_one_line_exit_2(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_option_is_one_line_and_makes_nothing(ns: NetNS) -> None:
    with as_user("nobody") as user:
        done = run_in(ns, user, "run", "--tokens", "sometimes", "--", "true")
        assert_one_line_exit_2(done, "--tokens")
        assert_one_line_exit_2(run_in(ns, user, "run"), "no command given")
        assert left_in_tmp(user) == []


def test_egress_without_a_tool_is_one_line(ns: NetNS, user: User, shared_dir: Path) -> None:
    user.env["PATH"] = tools_dir(shared_dir, without="pasta")
    (shared_dir / "slirp4netns").unlink(missing_ok=True)
    done = run_in(ns, user, "run", "--egress", "--", "true")
    assert_one_line_exit_2(done, "--egress needs pasta", "slirp4netns")
    assert left_in_tmp(user) == []


def test_refused_user_namespaces_are_one_line_naming_the_sysctl(ns: NetNS, shared_dir: Path) -> None:
    """In a user namespace whose limit of user namespaces is 0 (set there, not on the machine), uid
    65534 cannot make one: the line names the sysctl and what to do instead."""
    with as_user("nobody") as user:
        limited = [sys.executable, str(REPO / "tests" / "limited_userns.py")]
        argv = user.argv("run", "--", "true", between=limited)
        done = subprocess.run(
            in_ns(ns, argv), env=user.env, capture_output=True, text=True, timeout=60, check=False
        )
    assert_one_line_exit_2(
        done, "user.max_user_namespaces = 0", "netfilter apply", "AWS_EC2_METADATA_SERVICE_ENDPOINT"
    )


HIDE_REDIRECT_TOOLS = (
    'for t in nft iptables; do p=$(command -v $t) && mount --bind /dev/null "$(readlink -f "$p")"; '
    'done; exec "$@"'
)


def test_redirect_tools_missing_is_one_line(ns: NetNS) -> None:
    """No nft or iptables anywhere (hidden in a private mount namespace): one line, exit 2."""
    with as_user("nobody") as user:
        hide = ["env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "sh", "-c", HIDE_REDIRECT_TOOLS, "hide"]
        done = run_in(ns, user, "run", "--", "true", between=hide)
        assert left_in_tmp(user) == []
    assert_one_line_exit_2(done, "needs nft or iptables", "/usr/sbin")
