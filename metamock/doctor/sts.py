"""Do the credentials work? STS GetCallerIdentity through boto3, off the event loop."""

from __future__ import annotations

from typing import Any

from metamock.doctor.context import CheckFailed, DoctorContext
from metamock.doctor.credentials import fetch_container_credentials
from metamock.doctor.report import Check, failed, passed, skipped
from metamock.doctor.server import server_credentials
from metamock.ecs.client import credentials_endpoint
from metamock.errors import SettingsError
from metamock.sources.base import Credentials
from metamock.sources.local import FAKE_ACCESS_KEY_ID  # boto is imported only inside functions
from metamock.threads import in_daemon_thread

NAMES = ("sts",)

_CLOCK_CODES = {"SignatureDoesNotMatch", "RequestTimeTooSkewed", "InvalidSignatureException"}
_REJECTED_CODES = {"ExpiredToken", "InvalidClientTokenId", "AccessDenied", "UnrecognizedClientException"}


def _caller_identity(ctx: DoctorContext, creds: Credentials) -> dict[str, Any]:
    import botocore.session  # heavy, and only this check needs it
    from botocore.config import Config

    env = ctx.environ
    session = botocore.session.Session()
    client = session.create_client(
        "sts",
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        endpoint_url=env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL") or None,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key.reveal(),
        aws_session_token=creds.token.reveal(),
        config=Config(
            connect_timeout=ctx.timeouts.sts,
            read_timeout=ctx.timeouts.sts,
            retries={"total_max_attempts": 1, "mode": "standard"},
        ),
    )
    result: dict[str, Any] = client.get_caller_identity()
    return result


def _judge_error(exc: BaseException, source: str) -> Check:
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    if code in _CLOCK_CODES:
        fix = "the signature was refused: check the clock (see clock-drift) and the credentials"
    elif code in _REJECTED_CODES:
        fix = f"AWS refused the credentials from {source}: check the task role and that they are current"
    elif code:
        fix = "see the error code in the AWS STS documentation"
    else:
        fix = (
            "STS is not reachable: give the task egress to sts.<region>.amazonaws.com (NAT "
            "gateway or an STS VPC endpoint), or run doctor with --offline"
        )
    seen = code or type(exc).__name__
    return failed("sts", f"GetCallerIdentity with credentials from {source}: {seen}", fix)


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    if ctx.offline:
        out.append(skipped("sts", "--offline: AWS not called"))
        return
    try:
        ep = credentials_endpoint(ctx.environ)
    except SettingsError:
        out.append(skipped("sts", "no credentials to try (credentials-endpoint failed)"))
        return
    try:
        if ep is not None:
            source = "the container endpoint"
            creds = await fetch_container_credentials(ctx, ep)
        else:
            source = "the server"
            creds = await server_credentials(ctx)
    except CheckFailed as exc:
        out.append(skipped("sts", f"no credentials to try ({exc.check.name} failed)"))
        return
    if creds.access_key_id == FAKE_ACCESS_KEY_ID:
        out.append(
            skipped(
                "sts",
                "the server hands out metamock's own fake credentials (it found no AWS credentials "
                "when it started): AWS would refuse them, so STS is not called",
                "for real ones start `metamock serve` with --profile NAME or --role-arn ARN, or "
                "with AWS credentials configured",
            )
        )
        return
    try:
        ident = await in_daemon_thread(lambda: _caller_identity(ctx, creds))
    except Exception as exc:  # any botocore failure is this check's result
        out.append(_judge_error(exc, source))
        return
    out.append(passed("sts", f"credentials from {source} are {ident.get('Arn', '?')}"))
