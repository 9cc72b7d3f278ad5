#!/usr/bin/python3
"""Slim the metamock venv for the sidecar image, then byte-compile what the sidecar imports.

Run in the Dockerfile's build stage with the venv's own python:

    /opt/metamock/bin/python slim-venv.py VENV PYC_ROOT

1. pip, setuptools and wheel go (nothing installs into the image's venv at run time).
2. botocore keeps the service models the image uses and deletes the other ~440 (27 MB):
   sts (`doctor`'s GetCallerIdentity, AssumeRole of the local source and of assume-role
   profiles, web identity), ssm (the SSM agent's managed-instance registration), and what the
   credential chain creates clients for at run time: sso, sso-oidc (SSO profiles and their token
   refresh) and signin (`aws login` profiles). The files at the top of botocore/data
   (endpoints.json, partitions.json, sdk-default-configuration.json, _retry.json) stay.
   A client for any other service fails with botocore's UnknownServiceError, which lists
   exactly the services kept.
3. Every __pycache__ goes; then the modules that the sidecar's commands import (every metamock
   module, plus the lazily imported AWS SDK, pyroute2 and cryptography paths, with an STS and
   an SSM client created offline) are compiled: the venv's in place, the standard library's
   into PYC_ROOT (copied over / in the image's last layer, so the OS layer does not change when
   metamock does). checked-hash pycs: valid whatever the files' times after COPY.
   The compile step doubles as a smoke test of the pruned SDK.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import pkgutil
import py_compile
import shutil
import sys
import sysconfig
from pathlib import Path

KEEP_SERVICES = {"sts", "ssm", "sso", "sso-oidc", "signin"}
BUILD_TOOLS = ("pip", "setuptools", "wheel", "pkg_resources", "_distutils_hack")


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def drop_build_tools(venv: Path, site: Path) -> None:
    for entry in site.iterdir():
        stem = entry.name.split("-", 1)[0].split(".", 1)[0]
        if stem in BUILD_TOOLS or entry.name == "distutils-precedence.pth":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for script in venv.glob("bin/pip*"):
        script.unlink()


def prune_botocore(site: Path) -> None:
    data = site / "botocore" / "data"
    services = {p.name for p in data.iterdir() if p.is_dir()}
    missing = KEEP_SERVICES - services
    if missing:
        sys.exit(f"slim-venv: botocore has no model for {', '.join(sorted(missing))}")
    for name in sorted(services - KEEP_SERVICES):
        shutil.rmtree(data / name)
    print(f"slim-venv: botocore models kept: {' '.join(sorted(KEEP_SERVICES))} ({len(services)} before)")


def import_what_the_sidecar_uses() -> None:
    import metamock

    for module in pkgutil.walk_packages(metamock.__path__, "metamock."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    # The lazy imports: netfilter's routes, the identity document's signature, the SDK paths of
    # doctor's STS check and of the local source (credential chain, AssumeRole).
    for name in (
        "pyroute2",
        "cryptography.hazmat.primitives.asymmetric.rsa",
        "cryptography.hazmat.primitives.serialization.pkcs7",
        "aiobotocore.session",
        "aiobotocore.credentials",
        "aiobotocore.config",
        "botocore.session",
    ):
        importlib.import_module(name)
    import botocore.session
    from aiobotocore.credentials import create_credential_resolver
    from aiobotocore.session import AioSession

    fake = {"aws_access_key_id": "AKIDSLIMVENVEXAMPLE", "aws_secret_access_key": "not-a-secret"}
    for service in ("sts", "ssm"):
        botocore.session.Session().create_client(service, region_name="us-east-1", **fake)

    async def aio() -> None:
        session = AioSession()
        create_credential_resolver(session, region_name="us-east-1")
        async with session.create_client("sts", region_name="us-east-1", **fake):
            pass

    asyncio.run(aio())


def compile_imported(venv: Path, pyc_root: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    counts = {"venv": 0, "stdlib": 0}
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None)
        if not source or not source.endswith(".py"):
            continue
        path = Path(source)
        if not path.exists():  # loaded by a .pth before its package was deleted above
            continue
        cache = Path(importlib.util.cache_from_source(str(path)))
        if path.is_relative_to(venv):
            target, kind = cache, "venv"
        elif path.is_relative_to(stdlib):
            target, kind = pyc_root / cache.relative_to("/"), "stdlib"
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        py_compile.compile(
            str(path),
            cfile=str(target),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )
        counts[kind] += 1
    print(f"slim-venv: compiled {counts['venv']} venv and {counts['stdlib']} stdlib modules")


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: slim-venv.py VENV PYC_ROOT")
    venv, pyc_root = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    site = site_packages(venv)
    drop_build_tools(venv, site)
    prune_botocore(site)
    for cache in sorted(venv.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    sys.dont_write_bytecode = True  # only compile_imported writes pycs
    import_what_the_sidecar_uses()
    compile_imported(venv, pyc_root)


if __name__ == "__main__":
    main()
