"""The container credentials endpoint: reachable, valid, time to expiry, token file readable."""

from __future__ import annotations

import contextlib
import json
import os

from metamock.clock import iso_z
from metamock.doctor.context import CheckFailed, DoctorContext
from metamock.doctor.http import ProbeError, probe
from metamock.doctor.report import Check, Redactor, failed, passed, skipped, warned
from metamock.ecs import client
from metamock.ecs.client import TOKEN_FILE, CredentialsEndpoint, credentials_endpoint, read_token_file
from metamock.errors import SettingsError, UpstreamError
from metamock.secrets import key_hint
from metamock.sources.base import Credentials

NAMES = ("credentials-endpoint", "credentials-token-file")
# botocore refreshes IMDS credentials this close to expiry and, past it, keeps using them
# ("static stability"): fresh credentials need more life than this.
REFRESH_WINDOW = 15 * 60
BAD_VARIABLE_FIX = (
    "`metamock serve` refuses this value at start, as the SDKs do: use the value ECS/EKS injected "
    "(a FULL_URI must be https, a loopback address, 169.254.170.2 or 169.254.170.23)"
)


def parse_credentials(body: bytes, redactor: Redactor, now: float) -> Credentials:
    """The ECS/IMDS credential JSON, judged as serve judges it; registers its secrets with
    `redactor` first, so no message can show them. Raises ValueError."""
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    for key in ("AccessKeyId", "SecretAccessKey", "Token"):
        redactor.add(str(doc.get(key) or ""))
    return client.parse_credentials(doc, obtained_at=now)


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


async def fetch_container_credentials(ctx: DoctorContext, ep: CredentialsEndpoint) -> Credentials:
    """Credentials from the container endpoint; CheckFailed('credentials-endpoint') otherwise."""
    name = "credentials-endpoint"
    headers: dict[str, str] = {}
    try:
        authorization = ep.authorization()  # what serve sends: file over token, trimmed, checked
    except UpstreamError as exc:
        raise CheckFailed(
            failed(name, f"no usable authorization token ({exc})", "see credentials-token-file")
        ) from exc
    if authorization is not None:
        ctx.redactor.add(authorization.reveal())
        headers["Authorization"] = authorization.reveal()
    try:
        reply = await probe("GET", ep.url, timeout=ctx.timeouts.request, headers=headers)
    except ProbeError as exc:
        raise CheckFailed(
            failed(
                name,
                f"GET {ep.label}: {exc}",
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


def check_token_file(ctx: DoctorContext, ep: CredentialsEndpoint | None) -> Check:
    name = "credentials-token-file"
    if ep is None or ep.token_file is None:
        return skipped(name, f"{TOKEN_FILE} is not used")
    try:
        read_token_file(ep.token_file)  # only to give "cannot read" its own fix
    except OSError as exc:
        return failed(
            name,
            f"{ep.token_file}: {exc.strerror or exc}",
            f"mount the token file into this container and make it readable by this user (uid {os.getuid()})",
        )
    except UnicodeDecodeError:
        pass  # judged below, exactly as serve judges it
    try:
        token = ep.authorization()
    except UpstreamError as exc:
        return failed(
            name,
            str(exc),
            "the token projection has not been written yet, or the file is not a one-line token",
        )
    ctx.redactor.add(token.reveal() if token is not None else None)
    length = len(token.reveal()) if token is not None else 0
    return passed(name, f"{ep.token_file} readable ({length} characters)")


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    name = "credentials-endpoint"
    try:
        ep = credentials_endpoint(ctx.environ)
    except SettingsError as exc:
        out.append(failed(name, str(exc), BAD_VARIABLE_FIX))
        out.append(skipped("credentials-token-file", "no usable credentials endpoint"))
        return
    if ep is None:
        out.append(skipped(name, "no AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or FULL_URI"))
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
