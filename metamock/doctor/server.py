"""The local metamock server, asked over plain HTTP the way an EC2 client would."""

from __future__ import annotations

from dataclasses import dataclass

from metamock.doctor.context import CheckFailed, DoctorContext
from metamock.doctor.credentials import judge_expiry, parse_credentials
from metamock.doctor.http import ProbeError, Reply, probe
from metamock.doctor.place import Kind, where
from metamock.doctor.report import Check, failed, passed, skipped
from metamock.imds.wire import TOKEN_HEADER, TOKEN_PATH, TTL_HEADER
from metamock.sources.base import Credentials

NAMES = ("server", "imdsv2", "tokens", "role", "server-credentials")
CREDS_PATH = "/latest/meta-data/iam/security-credentials/"
PORT_HINT = "pass doctor the port it uses (--port / METAMOCK_PORT)"


def start_fix(ctx: DoctorContext) -> str:
    """What to do when no server answers, worded for where doctor runs."""
    place = where(ctx)
    if place.kind is Kind.SIDECAR:
        return f"metamock runs here ({place.why}) but not on port {ctx.port}: see its log, or {PORT_HINT}"
    if place.kind is Kind.TASK:
        return (
            "the metamock sidecar container is not up or uses another port: check its log, start "
            "this container after it (dependsOn HEALTHY, healthCheck `metamock healthcheck`), or " + PORT_HINT
        )
    return f"start it (`metamock serve` in another shell), or {PORT_HINT}"


@dataclass(frozen=True)
class Session:
    base: str
    token: str


async def _get(ctx: DoctorContext, url: str, name: str, token: str | None) -> Reply:
    headers = {TOKEN_HEADER: token} if token else {}
    try:
        return await probe("GET", url, timeout=ctx.timeouts.request, headers=headers)
    except ProbeError as exc:
        raise CheckFailed(failed(name, f"GET {url}: {exc}", "see the server check")) from exc


async def open_session(ctx: DoctorContext) -> Session:
    """An IMDSv2 token from the server; CheckFailed('server') when there is none."""
    base = f"http://127.0.0.1:{ctx.port}"
    url = base + TOKEN_PATH
    try:
        reply = await probe("PUT", url, timeout=ctx.timeouts.request, headers={TTL_HEADER: "21600"})
    except ProbeError as exc:
        reason = str(exc)
        if reason == "connection refused":
            raise CheckFailed(
                failed("server", f"nothing listens on 127.0.0.1:{ctx.port}", start_fix(ctx))
            ) from exc
        raise CheckFailed(
            failed(
                "server",
                f"PUT {url}: {reason}",
                "something on this port is not answering like metamock: restart it, or check what "
                f"owns the port (`ss -ltnp 'sport = :{ctx.port}'`)",
            )
        ) from exc
    token = reply.text()
    if reply.status != 200 or not token:
        raise CheckFailed(
            failed(
                "server",
                f"token PUT answered HTTP {reply.status}",
                f"the process on port {ctx.port} is not metamock (or a very old one): {start_fix(ctx)}",
            )
        )
    ctx.redactor.add(token)
    return Session(base, token)


async def role_name(ctx: DoctorContext, session: Session) -> str:
    reply = await _get(ctx, session.base + CREDS_PATH, "role", session.token)
    role = reply.text().strip()
    if reply.status != 200 or not role or "\n" in role:
        raise CheckFailed(
            failed(
                "role",
                f"iam/security-credentials/ answered HTTP {reply.status}",
                "the server has no role credentials: on ECS give the task a role (taskRoleArn); "
                "locally pass --profile or --role-arn to `metamock serve`",
            )
        )
    return role


async def fetch_credentials(ctx: DoctorContext, session: Session, role: str) -> Credentials:
    reply = await _get(ctx, session.base + CREDS_PATH + role, "server-credentials", session.token)
    try:
        if reply.status != 200:
            raise ValueError(f"HTTP {reply.status}")
        return parse_credentials(reply.body, ctx.redactor, ctx.clock.time())
    except (ValueError, TypeError) as exc:
        raise CheckFailed(
            failed(
                "server-credentials",
                f"iam/security-credentials/{role}: {exc}",
                "the server could not get credentials upstream: see credentials-endpoint and the "
                "server's log",
            )
        ) from exc


async def server_credentials(ctx: DoctorContext) -> Credentials:
    """Role credentials through the server, for the STS check. Raises CheckFailed."""
    session = await open_session(ctx)
    return await fetch_credentials(ctx, session, await role_name(ctx, session))


def _imdsv2(reply: Reply) -> Check:
    if reply.status != 200 or not reply.body:
        return failed(
            "imdsv2",
            f"GET meta-data/instance-id with a token: HTTP {reply.status}",
            "the server's tree is incomplete: check the task metadata source (see tmde)",
        )
    return passed("imdsv2", f"token PUT + GET instance-id ({reply.text().strip()}) in {reply.ms} ms")


def _tokens(reply: Reply) -> Check:
    if reply.status == 401:
        return passed(
            "tokens",
            "required (IMDSv1 off): clients that cannot PUT a token (old SDKs, curl scripts) get 401",
        )
    if reply.status == 200:
        return passed("tokens", "optional: IMDSv1 GETs without a token are answered")
    return failed(
        "tokens",
        f"GET without a token: HTTP {reply.status}",
        "expected 200 (tokens optional) or 401 (required): restart the server",
    )


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    pending = list(NAMES)

    def report(check: Check) -> None:
        out.append(check)
        pending.remove(check.name)

    try:
        session = await open_session(ctx)
        report(passed("server", f"listening on 127.0.0.1:{ctx.port}, IMDSv2 token issued"))
        instance_id = session.base + "/latest/meta-data/instance-id"
        report(_imdsv2(await _get(ctx, instance_id, "imdsv2", session.token)))
        report(_tokens(await _get(ctx, instance_id, "tokens", None)))
        role = await role_name(ctx, session)
        report(passed("role", f"serves role {role}"))
        creds = await fetch_credentials(ctx, session, role)
        report(
            judge_expiry(
                "server-credentials",
                creds,
                ctx.clock.time(),
                "",
                "the server should refresh them well before expiry: check its log and credentials-endpoint",
            )
        )
    except CheckFailed as exc:
        report(exc.check)
        for name in list(pending):
            report(skipped(name, f"not checked: {exc.check.name} failed"))
