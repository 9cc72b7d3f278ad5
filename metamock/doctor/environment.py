"""Where we run (Fargate / ECS on EC2 / EKS / local) and which ECS variables are present."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from metamock.doctor.context import DoctorContext
from metamock.doctor.procfs import pid1_environ
from metamock.doctor.report import Check, failed, passed, skipped, warned

ECS_VARIABLES = (
    "ECS_CONTAINER_METADATA_URI_V4",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EXECUTION_ENV",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
NAMES = ("platform", "ecs-env")
REEXPORT_FIX = (
    "something between PID 1 and this process reset the environment (su -, sudo, s6 without "
    "with-contenv, php-fpm clear_env): start the program with `metamock env exec -- CMD`, or "
    "source the output of `metamock env export`"
)
_EKS_HOSTS = {"169.254.170.23", "fd00:ec2::23", "[fd00:ec2::23]"}


def platform_of(environ: Mapping[str, str]) -> str | None:
    """A human name of where `environ` says we run; None when it shows nothing of AWS."""
    execution = environ.get("AWS_EXECUTION_ENV", "")
    if execution == "AWS_ECS_FARGATE":
        return "Fargate"
    if execution == "AWS_ECS_EC2":
        return "ECS on EC2"
    if execution.startswith("AWS_ECS"):
        return f"ECS ({execution})"
    full = environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")
    if (urlsplit(full).hostname or "") in _EKS_HOSTS or "KUBERNETES_SERVICE_HOST" in environ:
        return "EKS"
    if "ECS_CONTAINER_METADATA_URI_V4" in environ:
        return "ECS (AWS_EXECUTION_ENV unset)"
    return None


def on_ecs(environ: Mapping[str, str]) -> bool:
    return "ECS_CONTAINER_METADATA_URI_V4" in environ or environ.get("AWS_EXECUTION_ENV", "").startswith(
        "AWS_ECS"
    )


def check_platform(ctx: DoctorContext) -> Check:
    here = platform_of(ctx.environ)
    if here:
        return passed("platform", f"{here} (from AWS_EXECUTION_ENV and the ECS/EKS variables)")
    pid1 = pid1_environ(ctx.proc_root)
    there = platform_of(pid1) if pid1 else None
    if there:
        return failed(
            "platform",
            f"PID 1 runs on {there} but this process has none of the ECS variables",
            REEXPORT_FIX,
        )
    return passed("platform", "local (no ECS or EKS variables): `metamock serve` uses the local source")


def check_ecs_env(ctx: DoctorContext) -> Check:
    env = ctx.environ
    if not on_ecs(env):
        return skipped("ecs-env", "not on ECS; the local source needs none of these variables")
    present = [name for name in ECS_VARIABLES if env.get(name)]
    seen = "set: " + (", ".join(present) or "none")
    if not env.get("ECS_CONTAINER_METADATA_URI_V4"):
        return failed(
            "ecs-env",
            f"ECS_CONTAINER_METADATA_URI_V4 is missing ({seen})",
            "needs Fargate platform 1.4+ or ECS agent 1.39+; if PID 1 has it, " + REEXPORT_FIX,
        )
    if not (
        env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    ):
        return warned(
            "ecs-env",
            f"no AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/FULL_URI ({seen}): no role credentials to serve",
            "give the task a role (taskRoleArn in the task definition); if PID 1 has the variable, "
            + REEXPORT_FIX,
        )
    if not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
        return warned(
            "ecs-env",
            f"no AWS_REGION/AWS_DEFAULT_REGION ({seen})",
            "set AWS_REGION in the container definition's environment",
        )
    return passed("ecs-env", seen)


async def checks(ctx: DoctorContext, out: list[Check]) -> None:
    out.append(check_platform(ctx))
    out.append(check_ecs_env(ctx))
