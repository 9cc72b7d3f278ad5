"""The container credentials endpoint: reachable, valid, time to expiry, token file readable."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from metamock.clock import iso_z, parse_iso
from metamock.doctor.context import CheckFailed, DoctorContext
from metamock.doctor.http import ProbeError, probe
from metamock.doctor.report import Check, Redactor, failed, passed, skipped, warned
from metamock.secrets import Secret, key_hint
from metamock.sources.base import Credentials

NAMES = ("credentials-endpoint", "credentials-token-file")
ECS_AGENT = "http://169.254.170.2"
# botocore refreshes IMDS credentials this close to expiry and, past it, keeps using them
# ("static stability"): fresh credentials need more life than this.
REFRESH_WINDOW = 15 * 60
# Hosts botocore accepts in a plain-http FULL_URI (ContainerMetadataFetcher).
_FULL_URI_HOSTS = {"169.254.170.2", "169.254.170.23", "fd00:ec2::23", "localhost"}
_TOKEN_FILE_MAX = 64 * 1024


@dataclass(frozen=True)
class Endpoint:
    url: str
    token_file: str | None = None
    token: Secret | None = None

    @property
    def shown(self) -> str:
        """The URL without the credentials id: on ECS on EC2 that id is all that guards the role."""
        if self.url.startswith(ECS_AGENT + "/v2/credentials/"):
            return ECS_AGENT + "/v2/credentials/****"
        return self.url


def endpoint_of(environ: Mapping[str, str]) -> Endpoint | None:
    """Where botocore would fetch container credentials: RELATIVE beats FULL, FILE beats token."""
    relative = environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    if relative:
        return Endpoint(ECS_AGENT + relative)
    full = environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    if not full:
        return None
    token = environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    return Endpoint(
        full,
        token_file=environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") or None,
        token=Secret(token) if token else None,
    )


def full_uri_allowed(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host in _FULL_URI_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token_file(path: str) -> str:
    """The token, read without ever blocking (a FIFO here would hang a plain open())."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = os.read(fd, _TOKEN_FILE_MAX)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip()


def parse_credentials(body: bytes, redactor: Redactor, now: float) -> Credentials:
    """The ECS/IMDS credential JSON; registers its secrets with `redactor`. Raises ValueError."""
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    for key in ("AccessKeyId", "SecretAccessKey", "Token"):
        redactor.add(str(doc.get(key) or ""))
    missing = [k for k in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration") if not doc.get(k)]
    if missing:
        raise ValueError("missing " + ", ".join(missing))
    return Credentials(
        access_key_id=str(doc["AccessKeyId"]),
        secret_access_key=Secret(str(doc["SecretAccessKey"])),
        token=Secret(str(doc["Token"])),
        expiration=parse_iso(str(doc["Expiration"])),
        last_updated=now,
        role_arn=str(doc["RoleArn"]) if doc.get("RoleArn") else None,
    )


def _left(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def judge_expiry(name: str, creds: Credentials, now: float, prefix: str, fix: str) -> Check:
    """Key hint and expiry of `creds`; warn inside botocore's refresh window, fail when expired."""
    left = creds.expiration - now
    seen = f"{prefix}key {key_hint(creds.access_key_id)}, expires {iso_z(creds.expiration)}"
    if left <= 0:
        return failed(name, f"{seen} (expired {_left(-left)} ago)", fix)
    if left < REFRESH_WINDOW:
        return warned(name, f"{seen} (in {_left(left)}: inside the SDK refresh window)", fix)
    return passed(name, f"{seen} (in {_left(left)})")


async def fetch_container_credentials(ctx: DoctorContext, ep: Endpoint) -> Credentials:
    """Credentials from the container endpoint; CheckFailed('credentials-endpoint') otherwise."""
    name = "credentials-endpoint"
    headers: dict[str, str] = {}
    if ep.token_file:
        try:
            token = read_token_file(ep.token_file)
        except OSError as exc:
            raise CheckFailed(
                failed(
                    name,
                    f"cannot read the authorization token file ({exc.strerror or exc})",
                    "see credentials-token-file",
                )
            ) from exc
        ctx.redactor.add(token)
        headers["Authorization"] = token
    elif ep.token:
        headers["Authorization"] = ep.token.reveal()
    try:
        reply = await probe("GET", ep.url, timeout=ctx.timeouts.request, headers=headers)
    except ProbeError as exc:
        raise CheckFailed(
            failed(
                name,
                f"GET {ep.shown}: {exc}",
                "the credentials endpoint is not reachable from this network namespace: run in "
                "the task's network and do not proxy or firewall 169.254.170.2",
            )
        ) from exc
    if reply.status != 200:
        code = ""
        with contextlib.suppress(ValueError, AttributeError):
            code = str(json.loads(reply.body).get("code", ""))
        fix = {
            401: "the authorization token was refused: check AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)",
            403: "the authorization token was refused: check AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)",
            400: "the credentials id is stale: use the URI ECS injected into this task",
            429: "throttled: cache credentials until shortly before they expire",
        }.get(reply.status, "the ECS agent could not hand out credentials; retry, then check its logs")
        seen = f"GET: HTTP {reply.status}" + (f" {code}" if code else "")
        raise CheckFailed(failed(name, seen, fix))
    try:
        return parse_credentials(reply.body, ctx.redactor, ctx.clock.time())
    except (ValueError, TypeError) as exc:
        raise CheckFailed(
            failed(
                name,
                f"HTTP 200 but not credentials ({exc})",
                "the endpoint is not an ECS credentials endpoint",
            )
        ) from exc


def check_token_file(ctx: DoctorContext, ep: Endpoint | None) -> Check:
    name = "credentials-token-file"
    if ep is None or not ep.token_file:
        return skipped(name, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE is not used")
    try:
        token = read_token_file(ep.token_file)
    except OSError as exc:
        return failed(
            name,
            f"{ep.token_file}: {exc.strerror or exc}",
            f"mount the token file into this container and make it readable by this user (uid {os.getuid()})",
        )
    ctx.redactor.add(token)
    if not token:
        return failed(name, f"{ep.token_file} is empty", "the token projection has not been written yet")
    return passed(name, f"{ep.token_file} readable ({len(token)} characters)")


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    ep = endpoint_of(ctx.environ)
    name = "credentials-endpoint"
    if ep is None:
        out.append(skipped(name, "no AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or FULL_URI"))
    elif not ctx.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") and not full_uri_allowed(ep.url):
        out.append(
            failed(
                name,
                f"FULL_URI {ep.url} is neither https nor a loopback/ECS/EKS address",
                "SDKs refuse it: use https or 169.254.170.2 / 169.254.170.23 / a loopback address",
            )
        )
    else:
        try:
            creds = await fetch_container_credentials(ctx, ep)
        except CheckFailed as exc:
            out.append(exc.check)
        else:
            role = creds.role_arn.rsplit("/", 1)[-1] if creds.role_arn else "(no RoleArn)"
            out.append(
                judge_expiry(
                    name,
                    creds,
                    ctx.clock.time(),
                    f"role {role}, ",
                    "the ECS agent should have rotated them: check the task role and the agent",
                )
            )
    out.append(check_token_file(ctx, ep))
