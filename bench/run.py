"""metamock's benchmark: one command, ratios against a reference measured in the same run.

    sudo python bench/run.py            (needs root: it makes its own network namespace)

Inside a throwaway namespace with only `lo` (the fake ECS agent on 169.254.170.2:80, as on Fargate):
- throughput and p99 of the hot path (GET iam/security-credentials/<role> with a valid token),
  server pinned to CPU 0 and wrk to CPU 1, against the aiohttp low-level reference serving a
  same-size static body, same pinning, same event loop;
- ms from process start to the first answered token PUT (`serve --source ecs`), median of 3;
- RSS after the load;
- credential calls the upstream sees while 2,000 concurrent clients fetch credentials;
- AWS's amazon-ec2-metadata-mock (AEMM, built from the Go module proxy and cached: bench/aemm.py)
  beside them in the same rounds: req/s and p99 of its role-credentials path, ready time, RSS.
Figures are printed and written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
ROLE_PATH = "/latest/meta-data/iam/security-credentials/example-task-role"
sys.path.insert(0, str(REPO))

from bench import aemm
from tests.fakes.ecs_agent import fargate_env
from tests.netns import NetNS, create_netns
from tests.netns import base_env as env


def sh(ns: NetNS, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the namespace; a failure raises (the benchmark stops rather than guess)."""
    proc = ns.run(list(argv), timeout=120, **kw)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def wait_http(ns: NetNS, url: str, method: str = "GET", timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    args = ["curl", "-sf", "-o", "/dev/null", "-X", method, url]
    if method == "PUT":
        args += ["-H", "X-aws-ec2-metadata-token-ttl-seconds: 60"]
    while subprocess.run(ns.cmd(args), check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered")
        time.sleep(0.05)


def start_metamock(ns: NetNS, port: int, cpu: str = "0") -> subprocess.Popen[bytes]:
    return ns.popen(
        ["taskset", "-c", cpu, PY, "-m", "metamock", "serve", "--source", "ecs", "--port", str(port),
         "--host", "127.0.0.1", "--stop-notice", "0"],
        env=env(**fargate_env()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def ready_ms(ns: NetNS, port: int, start_server: Callable[[int], subprocess.Popen[bytes]]) -> float:
    """ms from `start_server(port)` to its first 200 on a token PUT (polled every 2 ms)."""
    start = time.monotonic()
    proc = start_server(port)
    probe = (
        "import http.client,time\n"
        "while True:\n"
        " try:\n"
        f"  c=http.client.HTTPConnection('127.0.0.1',{port},timeout=1);"
        "c.request('PUT','/latest/api/token',headers={'X-aws-ec2-metadata-token-ttl-seconds':'60'});"
        "r=c.getresponse()\n"
        "  if r.status==200: break\n"
        " except OSError: time.sleep(0.002)\n"
    )
    sh(ns, PY, "-c", probe)
    elapsed = (time.monotonic() - start) * 1000
    proc.kill()
    proc.wait()
    return elapsed


def start_aemm(ns: NetNS, binary: Path, port: int, home: Path) -> subprocess.Popen[bytes]:
    """AEMM on 127.0.0.1:`port`, CPU 0; its per-request log to /dev/null (it would be the cost)."""
    return ns.popen(
        ["taskset", "-c", "0", str(binary), "--hostname", "127.0.0.1", "--port", str(port)],
        env={**env(), "HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wrk(ns: NetNS, url: str, token: str, seconds: int, connections: int) -> dict[str, float]:
    out = sh(ns,
        "taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-s", str(REPO / "bench" / "token.lua"), url, env={**os.environ, "TOKEN": token},
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p99_ms": float(p99.group(1)) * scale,
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def instructions_per_request(  # noqa: PLR0917 - a bench helper, called twice
    ns: NetNS, server: list[str], port: int, path: str, n: int, environ: dict[str, str]
) -> int:
    """CPU instructions one request costs the server: (run with n requests - run with 0) / n,
    each run under callgrind from start to a graceful SIGTERM exit."""
    client = (
        "import http.client,sys\n"
        f"c=http.client.HTTPConnection('127.0.0.1',{port},timeout=300)\n"
        "c.request('PUT','/latest/api/token',headers={'X-aws-ec2-metadata-token-ttl-seconds':'600'})\n"
        "r=c.getresponse();t=r.read().decode()\n"
        f"for _ in range(int(sys.argv[1])):\n"
        f" c.request('GET','{path}',headers={{'X-aws-ec2-metadata-token':t}});r=c.getresponse();r.read()\n"
        " assert r.status==200,r.status\n"
    )
    totals = []
    for count in (0, n):
        proc = ns.popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *server],
                        env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        assert proc.stderr is not None
        # Ready when it answers a TCP connect; connects cost the server next to nothing.
        probe = f"import socket,time\nwhile True:\n try: socket.create_connection(('127.0.0.1',{port}),1).close(); break\n except OSError: time.sleep(0.2)\n"
        sh(ns, PY, "-c", probe)
        sh(ns, PY, "-c", client, str(count))
        proc.send_signal(signal.SIGTERM)
        err = proc.stderr.read().decode()
        proc.wait()
        found = re.search(r"Collected : (\d+)", err)
        assert found is not None, err[-2000:]
        totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) // n


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def server_pid(wrapper: subprocess.Popen[bytes]) -> int:
    """`ip netns exec` execs, and taskset execs: the wrapper's pid is the server's."""
    return wrapper.pid


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds (default 3)")
    parser.add_argument(
        "--callgrind",
        type=int,
        default=2000,
        metavar="N",
        help="also count CPU instructions per request over N sequential requests with valgrind "
        "(deterministic, unlike req/s on a shared machine); 0 = skip (default 2000)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("wrk"):
        print("bench: needs root (network namespaces) and wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    aemm_binary, aemm_how = aemm.build()
    if aemm_binary is None:
        print(f"bench: AEMM left out: {aemm_how}", file=sys.stderr)
    ns = create_netns("mmbench")
    results: dict[str, Any] = {"loop": loop, "connections": args.connections, "seconds": args.seconds}
    try:
        ns.popen([PY, "-m", "tests.fakes.ecs_agent", "--host", "169.254.170.2", "--port", "80"],
                 cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_http(ns, "http://169.254.170.2/_calls")

        results["ready_ms"] = [
            round(ready_ms(ns, 1400 + i, lambda p: start_metamock(ns, p)), 1) for i in range(3)
        ]
        results["ready_ms_median"] = statistics.median(results["ready_ms"])

        calls_at_start = json.loads(sh(ns, "curl", "-sf", "http://169.254.170.2/_calls").stdout).get(
            "credentials", 0
        )
        server = start_metamock(ns, 1338)
        wait_http(ns, "http://127.0.0.1:1338/latest/api/token", "PUT")
        token = sh(ns, "curl", "-sf", "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 21600",
                      "http://127.0.0.1:1338/latest/api/token").stdout  # fmt: skip
        body = sh(ns, "curl", "-sf", "-H", f"X-aws-ec2-metadata-token: {token}",
                     f"http://127.0.0.1:1338{ROLE_PATH}").stdout  # fmt: skip
        results["rss_mb_idle"] = round(rss_mb(server_pid(server)), 1)

        ref_args = ["--uvloop"] if loop == "uvloop" else []
        ref = ns.popen(["taskset", "-c", "0", PY, str(REPO / "bench" / "reference_server.py"), "--port", "1339",
                        "--size", str(len(body.encode())), *ref_args], env=env(), stdout=subprocess.DEVNULL)  # fmt: skip
        wait_http(ns, "http://127.0.0.1:1339/")

        aemm_url = aemm_token = None
        aemm_proc: subprocess.Popen[bytes] | None = None
        if aemm_binary is not None:
            home = Path(tempfile.mkdtemp(prefix="mmbench-aemm-"))
            results["aemm"] = {"how": aemm_how, "version": aemm.VERSION}
            results["aemm"]["ready_ms"] = [
                round(ready_ms(ns, 1410 + i, lambda p: start_aemm(ns, aemm_binary, p, home)), 1)
                for i in range(3)
            ]
            aemm_proc = start_aemm(ns, aemm_binary, 1340, home)
            wait_http(ns, "http://127.0.0.1:1340/latest/api/token", "PUT")
            aemm_token = sh(ns, "curl", "-sf", "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 21600",
                            "http://127.0.0.1:1340/latest/api/token").stdout  # fmt: skip
            listing = "http://127.0.0.1:1340/latest/meta-data/iam/security-credentials/"
            role = sh(
                ns, "curl", "-sf", "-H", f"X-aws-ec2-metadata-token: {aemm_token}", listing
            ).stdout.strip()
            aemm_url = listing + role
            aemm_body = sh(
                ns, "curl", "-sf", "-H", f"X-aws-ec2-metadata-token: {aemm_token}", aemm_url
            ).stdout
            results["aemm"]["body_bytes"] = len(aemm_body.encode())
            results["aemm"]["rss_mb_idle"] = round(rss_mb(server_pid(aemm_proc)), 1)
        # Warm all, then measure alternately so drift on the machine hits all alike.
        wrk(ns, f"http://127.0.0.1:1338{ROLE_PATH}", token, 2, args.connections)
        wrk(ns, "http://127.0.0.1:1339/", token, 2, args.connections)
        if aemm_url is not None and aemm_token is not None:
            wrk(ns, aemm_url, aemm_token, 2, args.connections)
        # Rounds alternate metamock and the reference, so drift on the machine hits both alike;
        # the ratio reported is the median of the rounds' ratios (all rounds are kept).
        rounds = []
        for _ in range(args.rounds):
            ours = wrk(ns, f"http://127.0.0.1:1338{ROLE_PATH}", token, args.seconds, args.connections)
            theirs = wrk(ns, "http://127.0.0.1:1339/", token, args.seconds, args.connections)
            one: dict[str, Any] = {
                "metamock": ours,
                "reference": theirs,
                "ratio": round(ours["rps"] / theirs["rps"], 3),
            }
            if aemm_url is not None and aemm_token is not None:
                one["aemm"] = wrk(ns, aemm_url, aemm_token, args.seconds, args.connections)
                one["ratio_aemm"] = round(ours["rps"] / one["aemm"]["rps"], 3)
            rounds.append(one)
        middle = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
        results["rounds"] = rounds
        results["metamock"] = middle["metamock"]
        results["reference"] = middle["reference"]
        results["ratio"] = middle["ratio"]
        results["rss_mb_after_load"] = round(rss_mb(server_pid(server)), 1)
        ref.kill()
        if aemm_proc is not None:
            by_aemm = sorted(rounds, key=lambda r: r["ratio_aemm"])[len(rounds) // 2]
            results["aemm"].update(
                rps=by_aemm["aemm"]["rps"], p99_ms=by_aemm["aemm"]["p99_ms"], ratio=by_aemm["ratio_aemm"],
                ready_ms_median=statistics.median(results["aemm"]["ready_ms"]),
                rss_mb_after_load=round(rss_mb(server_pid(aemm_proc)), 1),
            )  # fmt: skip
            aemm_proc.kill()
            shutil.rmtree(home, ignore_errors=True)

        before = json.loads(sh(ns, "curl", "-sf", "http://169.254.170.2/_calls").stdout).get("credentials", 0)
        burst = (
            "import asyncio,aiohttp,json\n"
            "async def main():\n"
            " conn=aiohttp.TCPConnector(limit=0)\n"
            " async with aiohttp.ClientSession(connector=conn) as s:\n"
            "  async def one():\n"
            f"   async with s.get('http://127.0.0.1:1338{ROLE_PATH}') as r: return r.status\n"
            "  st=await asyncio.gather(*[one() for _ in range(2000)])\n"
            " print(json.dumps({'ok': st.count(200)}))\n"
            "asyncio.run(main())\n"
        )
        burst_out = json.loads(sh(ns, "taskset", "-c", "1", PY, "-c", burst, env=env()).stdout)
        after = json.loads(sh(ns, "curl", "-sf", "http://169.254.170.2/_calls").stdout).get("credentials", 0)
        results["burst_2000"] = {"answered_200": burst_out["ok"], "upstream_calls_during": after - before,
                                 "upstream_calls_since_start": after - calls_at_start}  # fmt: skip
        if args.callgrind and shutil.which("valgrind"):
            size = str(len(body.encode()))
            ours_ir = instructions_per_request(ns, [PY, "-m", "metamock", "serve", "--source", "ecs", "--port",
                                                    "1350", "--host", "127.0.0.1", "--stop-notice", "0"],
                                               1350, ROLE_PATH, args.callgrind, env(**fargate_env()))  # fmt: skip
            ref_ir = instructions_per_request(ns, [PY, str(REPO / "bench" / "reference_server.py"), "--port", "1351",
                                                   "--size", size, *ref_args],
                                              1351, "/", args.callgrind, env())  # fmt: skip
            results["instructions_per_request"] = {"metamock": ours_ir, "reference": ref_ir,
                                                   "ratio": round(ref_ir / ours_ir, 3)}  # fmt: skip

    finally:
        ns.close()

    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    m, r = results["metamock"], results["reference"]
    print(
        f"event loop: {loop}; wrk -t1 -c{args.connections} -d{args.seconds}s, server on CPU 0, wrk on CPU 1"
    )
    print(
        f"hot path   metamock  {m['rps']:>10.0f} req/s  p99 {m['p99_ms']:.2f} ms  non-2xx {m['non_2xx']:.0f}"
    )
    print(f"reference  aiohttp   {r['rps']:>10.0f} req/s  p99 {r['p99_ms']:.2f} ms")
    spread = ", ".join(f"{r['ratio']:.3f}" for r in results["rounds"])
    print(
        f"ratio      {results['ratio']:.3f} median of rounds [{spread}]   (target >= 0.8; project goal 1.1)"
    )
    if "instructions_per_request" in results:
        ipr = results["instructions_per_request"]
        print(f"CPU instructions per request (callgrind, sequential): metamock {ipr['metamock']}, "
              f"reference {ipr['reference']}, ratio {ipr['ratio']:.3f}")  # fmt: skip
    if "rps" in results.get("aemm", {}):
        a = results["aemm"]
        print(f"AEMM       {aemm.VERSION:<9} {a['rps']:>10.0f} req/s  p99 {a['p99_ms']:.2f} ms  "
              f"(its role path, {a['body_bytes']} bytes)")  # fmt: skip
        spread_aemm = ", ".join(f"{r['ratio_aemm']:.3f}" for r in results["rounds"])
        print(f"ratio      {a['ratio']:.3f} metamock/AEMM, median of rounds [{spread_aemm}]")
        print(f"AEMM       ready {a['ready_ms_median']:.0f} ms median of {a['ready_ms']}; "
              f"RSS {a['rss_mb_idle']:.1f} MB idle, {a['rss_mb_after_load']:.1f} MB after load")  # fmt: skip
    print(f"ready      {results['ready_ms_median']:.0f} ms median of {results['ready_ms']}   (target <= 300)")
    print(
        f"RSS        {results['rss_mb_idle']:.1f} MB idle, {results['rss_mb_after_load']:.1f} MB after load (target <= 45)"
    )
    b = results["burst_2000"]
    print(f"2000 concurrent credential fetches: {b['answered_200']} answered 200, "
          f"{b['upstream_calls_during']} upstream calls during, {b['upstream_calls_since_start']} since start (target 1)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
