"""Proxy variables: botocore sends IMDS and container-credential requests through HTTP_PROXY."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

from metamock.doctor.context import DoctorContext
from metamock.doctor.report import Check, failed, passed, warned

NAMES = ("proxy",)
MUST_BYPASS = ("127.0.0.1", "169.254.169.254", "169.254.170.2")


def _value(environ: Mapping[str, str], name: str) -> str:
    # urllib (and so botocore) prefers the lower-case spelling.
    return environ.get(name.lower()) or environ.get(name.upper()) or ""


def uncovered(environ: Mapping[str, str]) -> list[str]:
    """The addresses NO_PROXY does not exempt, judged exactly as botocore's urllib does."""
    no_proxy = _value(environ, "no_proxy")
    return [h for h in MUST_BYPASS if not proxy_bypass_environment(h, {"no": no_proxy})]


def _shown(url: str) -> str:
    # A proxy URL may carry a password: show only where it points.
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def check_proxy(ctx: DoctorContext) -> Check:
    http = _value(ctx.environ, "http_proxy")
    https = _value(ctx.environ, "https_proxy")
    if not http and not https:
        return passed("proxy", "no HTTP_PROXY/HTTPS_PROXY")
    missing = uncovered(ctx.environ)
    fix = "add them to NO_PROXY/no_proxy: NO_PROXY=" + ",".join(MUST_BYPASS) + ",localhost"
    if not missing:
        return passed("proxy", "proxy set; NO_PROXY exempts " + ", ".join(MUST_BYPASS))
    if http:
        return failed(
            "proxy",
            f"HTTP_PROXY={_shown(http)} catches {', '.join(missing)}: IMDS and credential requests "
            "go to the proxy and time out or fail",
            fix + " (CIDR entries like 169.254.0.0/16 are not understood by botocore)",
        )
    return warned(
        "proxy",
        f"HTTPS_PROXY={_shown(https)} without NO_PROXY for {', '.join(missing)} (harmless for plain-http "
        "IMDS in botocore, not in every client)",
        fix,
    )


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    out.append(check_proxy(ctx))
