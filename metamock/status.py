"""What a running server reports about itself (`metamock status`, `metamock doctor`), collected
in the server and answered over the control socket as one JSON object.

Never a secret: the credentials part names the role, the times and the last upstream problem
(the credential cache's last failure, the line it logs, written to be safe), not the key id, the
secret, the token or the credentials id. The redirect is checked live, off the event loop, by
the same `metamock.netfilter.status()` that `metamock netfilter status` prints.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from metamock import __version__
from metamock.clock import iso_z
from metamock.endpoint import bracket
from metamock.errors import MetamockError
from metamock.translate import role_name

if TYPE_CHECKING:
    from metamock.service import Service

REDIRECT_TIMEOUT = 4.0  # below the client's 10 s; nft/iptables are bounded by their own timeouts
MAX_PROBLEM = 300


async def collect(service: Service, *, redirect: bool = True) -> dict[str, Any]:
    """The status answer of `service`; `redirect=False` skips the live netfilter check."""
    settings = service.settings
    now = service.clock.time()
    return {
        "ok": True,
        "version": __version__,
        "started_at": iso_z(service.started_at),
        "uptime": max(0.0, round(now - service.started_at, 1)),
        "source": settings.resolved_source(),
        "listen": [f"{bracket(h)}:{service.port}" for h in service.listening],
        "tokens": settings.tokens,
        "access_log": settings.access_log,
        "credentials": credentials_status(service, now),
        "redirect": await redirect_status(service) if redirect else {"checked": False},
        "scenarios": service.scenario_status(),
        "requests": service.counters.snapshot(),
    }


def credentials_status(service: Service, now: float) -> dict[str, Any]:
    creds = service.source.credentials()
    problem = service.source.last_error()
    out: dict[str, Any] = {
        "role": role_name(creds, service.config) if creds is not None else None,
        "expiration": iso_z(creds.expiration) if creds is not None else None,
        "expires_in": round(creds.expiration - now) if creds is not None else None,
        "last_refresh": iso_z(creds.last_updated) if creds is not None else None,
        "last_error": problem[1][:MAX_PROBLEM] if problem else None,
        "last_error_at": iso_z(problem[0]) if problem else None,
    }
    return out


async def redirect_status(service: Service) -> dict[str, Any]:
    """Whether 169.254.169.254 reaches this server right now; "requested" False without --netfilter."""
    if service.netfilter_backend is None and not service.settings.netfilter:
        return {"checked": True, "requested": False}
    from metamock import netfilter

    try:
        # The server's environment, as at apply: METAMOCK_RUN_DIR says where the record is.
        environ = service.settings.environ
        live = await asyncio.wait_for(asyncio.to_thread(netfilter.status, environ=environ), REDIRECT_TIMEOUT)
    except TimeoutError:
        return _broken(service, f"the check did not finish within {REDIRECT_TIMEOUT:g} s")
    except MetamockError as exc:
        return _broken(service, str(exc))
    return {
        "checked": True,
        "requested": True,
        "backend": live.backend or service.netfilter_backend,
        # Live rules and routes as a clean apply writes them, and a token round-trip through
        # 169.254.169.254 that this very server signed (netfilter.status's probe).
        "working": live.working and live.port == service.port,
        "problems": list(live.problems),
        "probe": live.probe,
        "repairs": service.redirect_repairs,
        "last_repair": service.redirect_last_repair,
        "detail": live.summary,
    }


def _broken(service: Service, why: str) -> dict[str, Any]:
    return {
        "checked": True,
        "requested": True,
        "backend": service.netfilter_backend,
        "working": False,
        "detail": why,
    }
