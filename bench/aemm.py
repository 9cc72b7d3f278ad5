"""AWS's own IMDS mock (amazon-ec2-metadata-mock, "AEMM"), built for the benchmark to measure beside.

Fetched as a Go module through the Go module proxy at a pinned version and built from the module
directory, never committed; the binary is cached by version (`$XDG_CACHE_HOME/metamock-bench/`, or
~/.cache), so a rerun on the same machine builds nothing. Measured cold on this kind of machine
(2 cores): 1 s to download, 20-28 s to build; 10.5 MB binary.

    python bench/aemm.py        builds (or finds) it and prints its path
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODULE = "github.com/aws/amazon-ec2-metadata-mock"
VERSION = "v1.13.0"
BUILD_TIMEOUT = 900


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    environ = dict(os.environ) if environ is None else environ
    base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "metamock-bench" / f"aemm-{VERSION}"


def build(quiet: bool = False) -> tuple[Path | None, str]:
    """The AEMM binary (built now or found in the cache) and how it came; (None, why) without Go
    or when the proxy refuses."""
    cache = cache_dir()
    binary = cache / "ec2-metadata-mock"
    if binary.is_file():
        return binary, f"cached at {binary}"
    go = shutil.which("go")
    if go is None:
        return None, "no Go toolchain on PATH"
    cache.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOMODCACHE": str(cache / "gomod"),
        "GOCACHE": str(cache / "gocache"),
        "GOFLAGS": "-mod=mod -buildvcs=false",
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
    }
    start = time.monotonic()
    got = subprocess.run(
        [go, "mod", "download", "-json", f"{MODULE}@{VERSION}"],
        env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    info = json.loads(got.stdout or "{}")
    if got.returncode != 0 or "Dir" not in info:
        return None, f"go mod download {MODULE}@{VERSION}: {info.get('Error') or got.stderr.strip()}"
    source = cache / "src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(info["Dir"], source)  # the module cache is read-only
    for path in [source, *source.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    if not quiet:
        print(f"bench: building {MODULE}@{VERSION} (once; cached in {cache})", file=sys.stderr)
    made = subprocess.run(
        [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "./cmd/ec2-metadata-mock"],
        cwd=source, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        return None, f"go build: {made.stderr.strip()[-500:]}"
    return binary, f"built in {time.monotonic() - start:.0f} s"


if __name__ == "__main__":
    path, how = build()
    print(path if path is not None else f"bench: AEMM unavailable: {how}")
    sys.exit(0 if path is not None else 1)
