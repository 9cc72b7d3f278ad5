"""Helpers shared by the doctor tests: contexts, fake /proc trees, and the no-secrets check."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from metamock.doctor.context import DoctorContext, Timeouts
from metamock.doctor.report import Check, render_human, render_json
from tests.fakes.ecs_agent import AUTH_TOKEN, CRED_ID, FIXTURES

_CREDS = json.loads((FIXTURES / "credentials.json").read_text())
# Everything that must never appear in doctor's output, in any format or status.
SECRETS = (
    _CREDS["SecretAccessKey"],
    _CREDS["Token"],
    _CREDS["AccessKeyId"],
    AUTH_TOKEN,
    CRED_ID,
    "rotatedSecret",
    "rotatedToken",
)
FAST = Timeouts(request=1.0, command=2.0, sts=2.0, group=4.0)
ALL_CAPS = "000001ffffffffff"
NO_CAPS = "0000000000000000"


def fake_proc(
    root: Path,
    *,
    cap_eff: str = ALL_CAPS,
    pid1_argv: Sequence[str] = ("/sbin/init",),
    pid1_env: Mapping[str, str] | None = None,
    others: Iterable[Sequence[str]] = (),
) -> Path:
    """A /proc-shaped tree: self/status, PID 1 (cmdline, environ) and more processes."""
    root.mkdir(parents=True, exist_ok=True)
    proc = Path(tempfile.mkdtemp(prefix="proc-", dir=root))
    (proc / "self").mkdir()
    (proc / "self" / "status").write_text(f"Name:\tpython\nCapInh:\t0\nCapEff:\t{cap_eff}\n")
    procs = [list(pid1_argv), *[list(p) for p in others]]
    for pid, argv in enumerate(procs, start=1):
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        env = pid1_env if pid == 1 and pid1_env is not None else {}
        (proc / str(pid) / "environ").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
    return proc


def context(environ: Mapping[str, str], tmp_path: Path, **kw: object) -> DoctorContext:
    if "proc_root" not in kw:
        kw["proc_root"] = fake_proc(tmp_path)
    kw.setdefault("dev_log", tmp_path / "no-dev-log")
    kw.setdefault("timeouts", FAST)
    return DoctorContext(environ=dict(environ), **kw)  # type: ignore[arg-type]


def assert_no_secrets(*outputs: str | Sequence[Check]) -> None:
    """No output, whatever its format, carries a secret."""
    texts: list[str] = []
    for out in outputs:
        if isinstance(out, str):
            texts.append(out)
        else:
            texts += [render_human(out), render_human(out, colour=True), render_json(out)]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret[:4]}... leaked in:\n{text}"


def by_name(checks: Sequence[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}
