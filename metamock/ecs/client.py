"""HTTP clients for the task metadata endpoint v4 and the container credentials endpoint.

Which credentials endpoint, as botocore decides (metamock follows botocore, not the JS SDK):
`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (on 169.254.170.2) wins over
`AWS_CONTAINER_CREDENTIALS_FULL_URI`, and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (re-read on every
fetch, since Kubernetes rotates it) wins over `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from metamock.clock import parse_iso
from metamock.errors import SettingsError, UpstreamError
from metamock.secrets import Secret
from metamock.sources.base import Credentials

CREDENTIALS_HOST = "169.254.170.2"
# botocore's ContainerMetadataFetcher._ALLOWED_HOSTS; loopback addresses and https are also allowed.
FULL_URI_HOSTS = frozenset({"169.254.170.2", "169.254.170.23", "fd00:ec2::23", "localhost"})
REQUIRED_FIELDS = ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")
TOKEN_FILE_MAX = 64 * 1024  # a projected token is ~1 KiB; never read an unbounded file
_SAFE_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")

V4 = "ECS_CONTAINER_METADATA_URI_V4"
RELATIVE = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
FULL = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
TOKEN_FILE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"


class Throttled(UpstreamError):
    """The upstream answered 429: slow down."""


@dataclass(frozen=True)
class CredentialsEndpoint:
    """Where container credentials come from and how the request is authorised."""

    # The URL holds the credential id (a capability on the host): out of the repr.
    url: str = field(repr=False)
    label: str  # the URL as it may be logged: no credential id, no query
    variable: str  # RELATIVE or FULL: the one that decided
    token_file: Path | None = None
    token: Secret | None = None

    def authorization(self) -> Secret | None:
        """The Authorization value for one fetch: the token file (re-read every time, since
        Kubernetes rotates it) wins over the token; UpstreamError naming the variable when it
        cannot be used."""
        if self.token_file is not None:
            source = f"{TOKEN_FILE} {self.token_file}"
            try:
                value = read_token_file(self.token_file)
            except OSError as exc:
                raise UpstreamError(f"{source}: cannot read ({exc.strerror or exc})") from None
            except UnicodeDecodeError:
                # The codec's message quotes a byte of the token: name the kind only.
                raise UpstreamError(f"{source}: cannot read (not UTF-8)") from None
        elif self.token is not None:
            value, source = self.token.reveal(), TOKEN
        else:
            return None
        # botocore refuses CR/LF; surrounding whitespace (a file's final newline) is trimmed first.
        value = value.strip()
        if not value or "\r" in value or "\n" in value:
            raise UpstreamError(f"{source}: empty or not a legal header value")
        return Secret(value)


def credentials_endpoint(
    environ: Mapping[str, str], *, credentials_host: str | None = None
) -> CredentialsEndpoint | None:
    """The container credentials endpoint `environ` names, chosen as botocore chooses (see the
    module docstring); None when neither variable is set, SettingsError naming a bad one.

    `serve` (through Endpoints) and `doctor` both decide here, so doctor judges what serve uses.
    """
    token_file = Path(environ[TOKEN_FILE]) if environ.get(TOKEN_FILE) else None
    token = Secret(environ[TOKEN]) if environ.get(TOKEN) else None
    relative = environ.get(RELATIVE, "")
    full = environ.get(FULL, "")
    if relative:
        if not relative.startswith("/"):
            raise SettingsError(RELATIVE, "must be a path starting with '/'")
        url = f"http://{credentials_host or CREDENTIALS_HOST}{relative}"
        return CredentialsEndpoint(url, masked_url(url), RELATIVE, token_file, token)
    if full:
        _check_full_uri(full)
        return CredentialsEndpoint(full, masked_url(full), FULL, token_file, token)
    return None


# A path segment shown as is in a credentials URL's label: a plain word or an API version.
_PLAIN_SEGMENT = re.compile(r"^(?:[A-Za-z][A-Za-z_-]{0,31}|v\d{1,2})$")


def masked_url(url: str) -> str:
    """A credentials URL as it may be logged, in every mode (RELATIVE_URI and FULL_URI): the
    scheme, host and port; the path's leading plain words (`/v2/credentials`); then `****` for
    the last segment and for everything from the first segment that is not a plain word. No
    user info, query or fragment.

    Why so much: the credential id (RELATIVE_URI's last segment; anywhere in a FULL_URI, which
    is any URL the platform chose) lets anyone who can reach the endpoint fetch the role.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "(unparsable URL)"
    segments = parts.path.split("/")[1:]
    shown: list[str] = []
    for segment in segments[:-1]:
        if not _PLAIN_SEGMENT.match(segment):
            break
        shown.append(segment)
    masked = "/".join([*shown, "****"]) if segments else ""
    return f"{parts.scheme}://{netloc}/{masked}" if masked else f"{parts.scheme}://{netloc}"


def read_token_file(path: Path) -> str:
    """A token file's text, read without ever blocking: a FIFO there would hang a plain open()
    (and with it the event loop or doctor); anything but a regular file is an OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = os.read(fd, TOKEN_FILE_MAX)
    finally:
        os.close(fd)
    return data.decode("utf-8")


@dataclass(frozen=True)
class Endpoints:
    """Where the ECS documents and credentials live, read from the variables ECS injects."""

    metadata_uri: str
    credentials: CredentialsEndpoint | None = None

    @property
    def credentials_url(self) -> str | None:
        return self.credentials.url if self.credentials is not None else None

    @property
    def credentials_label(self) -> str:
        return self.credentials.label if self.credentials is not None else "(none)"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, credentials_host: str | None = None) -> Endpoints:
        """Read exactly the ECS variables; a bad or missing one is a SettingsError naming it."""
        metadata_uri = environ.get(V4, "").strip().rstrip("/")
        if not metadata_uri:
            raise SettingsError(V4, "not set (is this an ECS task on platform version >= 1.4?)")
        parts = urlsplit(metadata_uri)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise SettingsError(V4, f"not an http URL: {_label(metadata_uri)}")
        return cls(metadata_uri, credentials_endpoint(environ, credentials_host=credentials_host))


def _check_full_uri(url: str) -> None:
    """Refuse hosts botocore refuses: only loopback, the ECS/EKS agent addresses, or https."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise SettingsError(FULL, "not a URL") from exc
    if parts.scheme == "https" and host:
        return
    if parts.scheme != "http" or not host:
        raise SettingsError(FULL, f"not an http(s) URL: {masked_url(url)}")
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    if host not in FULL_URI_HOSTS:
        allowed = ", ".join(sorted(FULL_URI_HOSTS))
        raise SettingsError(FULL, f"host {host!r} is not loopback, https or one of {allowed} (as botocore)")


def _label(url: str) -> str:
    """A URL as it may appear in a log line: no user info, no query, no fragment."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "(unparsable URL)"
    return f"{parts.scheme}://{netloc}{parts.path}"


def parse_credentials(
    doc: Mapping[str, Any], *, obtained_at: float, role_name: str | None = None, partition: str = "aws"
) -> Credentials:
    """Normalise either answer shape (ECS with RoleArn, EKS Pod Identity with AccountId)."""
    missing = [name for name in REQUIRED_FIELDS if not isinstance(doc.get(name), str) or not doc[name]]
    if missing:
        raise ValueError(f"answer lacks {', '.join(missing)}")
    try:
        expiration = parse_iso(doc["Expiration"])
    except ValueError as exc:
        raise ValueError(f"unreadable Expiration {doc['Expiration'][:40]!r}") from exc
    role_arn = doc.get("RoleArn") if isinstance(doc.get("RoleArn"), str) else None
    account = doc.get("AccountId")
    if role_arn is None and role_name and isinstance(account, str) and account.isdigit():
        # Pod Identity names no role; the configured name makes the ARN the IMDS face expects.
        role_arn = f"arn:{partition}:iam::{account}:role/{role_name}"
    return Credentials(
        access_key_id=doc["AccessKeyId"],
        secret_access_key=Secret(doc["SecretAccessKey"]),
        token=Secret(doc["Token"]),
        expiration=expiration,
        last_updated=obtained_at,
        role_arn=role_arn,
    )


class EcsClient:
    """One GET per call, a per-request timeout, every failure an UpstreamError without secrets."""

    def __init__(self, session: aiohttp.ClientSession, endpoints: Endpoints, *, timeout: float = 2.0) -> None:
        self._session = session
        self._endpoints = endpoints
        self._timeout = timeout

    async def task(self) -> dict[str, Any]:
        """The task document (`${ECS_CONTAINER_METADATA_URI_V4}/task`)."""
        url = f"{self._endpoints.metadata_uri}/task"
        return await self._get_json(url, f"ECS task metadata {_label(url)}", {})

    async def container(self) -> dict[str, Any]:
        """This container's document (`${ECS_CONTAINER_METADATA_URI_V4}`)."""
        url = self._endpoints.metadata_uri
        return await self._get_json(url, f"ECS container metadata {_label(url)}", {})

    async def credentials(
        self, *, obtained_at: float, role_name: str | None = None, partition: str = "aws"
    ) -> Credentials:
        """Fetch and normalise role credentials; UpstreamError when not configured or bad."""
        endpoint = self._endpoints.credentials
        label = f"container credentials {self._endpoints.credentials_label}"
        if endpoint is None:
            raise UpstreamError(f"{label}: no {RELATIVE} or {FULL} in the environment")
        url = endpoint.url
        headers = {"Accept": "application/json"}
        authorization = endpoint.authorization()
        if authorization is not None:
            headers["Authorization"] = authorization.reveal()
        doc = await self._get_json(url, label, headers)
        try:
            return parse_credentials(doc, obtained_at=obtained_at, role_name=role_name, partition=partition)
        except ValueError as exc:
            raise UpstreamError(f"{label}: {exc}") from None

    async def _get_json(self, url: str, label: str, headers: dict[str, str]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with self._session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
                body = await response.read()
        except TimeoutError:
            raise UpstreamError(f"{label}: no answer within {self._timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise UpstreamError(f"{label}: cannot connect ({reason})") from None
        except (aiohttp.ClientError, OSError) as exc:
            # aiohttp's own messages can carry the full URL: keep only the kind of failure.
            raise UpstreamError(f"{label}: {type(exc).__name__}") from None
        if status == 429:
            raise Throttled(f"{label}: HTTP 429 (throttled)")
        if status != 200:
            raise UpstreamError(f"{label}: HTTP {status}{_error_code(body)}")
        try:
            doc = json.loads(body)
        except ValueError:
            raise UpstreamError(f"{label}: answer is not JSON") from None
        if not isinstance(doc, dict):
            raise UpstreamError(f"{label}: answer is not a JSON object")
        return doc


def _error_code(body: bytes) -> str:
    """The agent's `code` (e.g. CredentialsUninitialized) when it is a plain word, for the log."""
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return ""
    return f" {code}" if isinstance(code, str) and _SAFE_CODE.match(code) else ""
