"""A fake ECS agent: TMDE v4 and the container credentials endpoint, shaped like the real ones.

In-process: `FakeEcsAgent(...)` then `await agent.start("127.0.0.1", 0)`; its attributes steer
behaviour (status codes, hangs, bad JSON, rotation) and count calls.
In a network namespace: `python -m tests.fakes.ecs_agent --host 169.254.170.2 --port 80`.

Paths (ids as Fargate uses them):
  /v4/<TASK_ID>            this container's document
  /v4/<TASK_ID>/task       the task document
  /v2/credentials/<CRED_ID> role credentials (RELATIVE_URI)
  /v1/credentials           EKS Pod Identity shape, needs Authorization == `auth_token`
  /_calls                   call counters, for tests
  /_steer?credentials=500   steering from another process (a test driving the agent in a
                            namespace): `<kind>=<status>|hang|` (empty: answer again),
                            `expires_in=S` (the same credentials from now on, expiring S s from
                            now), `rotate=1`; answers the call counters
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TASK_ID = "e9028f8d5d8e4f258373e7b93ce9a3c3-2495160603"
CRED_ID = "6e2b7c2a-1b6f-4a55-9c55-3f0f6a1b2c3d"
RELATIVE_URI = f"/v2/credentials/{CRED_ID}"
AUTH_TOKEN = "pod-identity-jwt-EXAMPLE"


def fargate_env(host: str = "169.254.170.2", port: int = 80) -> dict[str, str]:
    """The variables Fargate injects into a container, pointing at this fake."""
    base = f"http://{host}" if port == 80 else f"http://{host}:{port}"
    return {
        "ECS_CONTAINER_METADATA_URI_V4": f"{base}/v4/{TASK_ID}",
        "ECS_CONTAINER_METADATA_URI": f"{base}/v3/{TASK_ID}",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": RELATIVE_URI,
        "AWS_EXECUTION_ENV": "AWS_ECS_FARGATE",
        "AWS_REGION": "us-west-2",
        "AWS_DEFAULT_REGION": "us-west-2",
        "ECS_AGENT_URI": f"{base}/api/{TASK_ID}",
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeEcsAgent:
    def __init__(
        self,
        task: dict[str, Any] | None = None,
        container: dict[str, Any] | None = None,
        credentials: dict[str, Any] | None = None,
        credential_lifetime: float | None = 6 * 3600,
        clock: Any = None,
    ) -> None:
        self.task = task or json.loads((FIXTURES / "fargate-task.json").read_text())
        self.container = container or self.task["Containers"][0]
        self.base_credentials = credentials or json.loads((FIXTURES / "credentials.json").read_text())
        self.credential_lifetime = credential_lifetime
        self.generation = 0
        self.calls: Counter[str] = Counter()
        # Steering: each is consulted per request.
        self.status: dict[str, int] = {}  # path kind -> forced status ("task", "container", "credentials")
        self.hang: set[str] = set()  # path kinds that never answer
        self.bad_json: set[str] = set()
        self.fail_count: dict[str, int] = {}  # fail the next N requests of a kind with 500
        self.delay: float = 0.0
        # Optional: an object with .time() (e.g. metamock.clock.ManualClock) for issued expirations.
        self.clock = clock
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, headers) of every request
        self._released = asyncio.Event()  # set by stop(): hung handlers end instead of blocking it
        self._runner: web.AppRunner | None = None
        self.port = 0

    def rotate(self) -> None:
        """Issue a new set of credentials on the next request."""
        self.generation += 1

    def current_credentials(self) -> dict[str, Any]:
        creds = dict(self.base_credentials)
        if self.generation:
            creds["AccessKeyId"] = f"ASIAROTATED{self.generation:09d}"
            creds["SecretAccessKey"] = f"rotatedSecret{self.generation:027d}"
            creds["Token"] = f"rotatedToken{self.generation}"
        if self.credential_lifetime is not None:
            creds["Expiration"] = _iso(self.now() + self.credential_lifetime)
        return creds

    def now(self) -> float:
        return self.clock.time() if self.clock is not None else time.time()

    async def _steer(self, kind: str) -> web.Response | None:
        self.calls[kind] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if kind in self.hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), 3600)
        if self.fail_count.get(kind, 0) > 0:
            self.fail_count[kind] -= 1
            return web.json_response(
                {"code": "InternalServerError", "message": "fake failure", "HTTPErrorCode": 500}, status=500
            )
        status = self.status.get(kind)
        if status == 429:
            return web.Response(status=429, text="You have reached maximum request limit.")
        if status is not None:
            return web.json_response(
                {"code": "Error", "message": "forced", "HTTPErrorCode": status}, status=status
            )
        if kind in self.bad_json:
            return web.Response(text="{not json", content_type="application/json")
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append((path, dict(request.headers)))
        if path == "/_calls":
            return web.json_response(dict(self.calls))
        if path == "/_steer":
            return self._steer_from(request.query)
        if path == f"/v4/{TASK_ID}/task":
            return await self._steer("task") or web.json_response(self.task)
        if path == f"/v4/{TASK_ID}":
            return await self._steer("container") or web.json_response(self.container)
        if path == RELATIVE_URI:
            return await self._steer("credentials") or web.json_response(self.current_credentials())
        if path == "/v1/credentials":
            if request.headers.get("Authorization") != AUTH_TOKEN:
                self.calls["unauthorized"] += 1
                return web.json_response({"code": "AccessDenied"}, status=401)
            steered = await self._steer("credentials")
            if steered:
                return steered
            creds = self.current_credentials()
            exp = datetime.fromtimestamp(self.now() + (self.credential_lifetime or 3600), UTC)
            return web.json_response(
                {
                    "AccessKeyId": creds["AccessKeyId"],
                    "SecretAccessKey": creds["SecretAccessKey"],
                    "Token": creds["Token"],
                    "AccountId": "111122223333",
                    "Expiration": exp.strftime("%Y-%m-%dT%H:%M:%S.123456789Z"),
                }
            )
        if path.startswith("/v2/credentials/"):
            return web.json_response(
                {"code": "InvalidIdInRequest", "message": "bad id", "HTTPErrorCode": 400}, status=400
            )
        return web.Response(status=404, text="404 page not found")

    def _steer_from(self, query: Any) -> web.Response:
        for kind in ("task", "container", "credentials"):
            value = query.get(kind)
            if value is None:
                continue
            self.status.pop(kind, None)
            self.hang.discard(kind)
            if value == "hang":
                self.hang.add(kind)
            elif value:
                self.status[kind] = int(value)
        if "expires_in" in query:
            self.credential_lifetime = None
            self.base_credentials = {
                **self.base_credentials,
                "Expiration": _iso(self.now() + float(query["expires_in"])),
            }
        if query.get("rotate"):
            self.rotate()
        return web.json_response(dict(self.calls))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.port

    async def stop(self) -> None:
        self._released.set()
        if self._runner:
            await self._runner.cleanup()


async def _main(args: argparse.Namespace) -> None:
    task = json.loads(Path(args.task).read_text()) if args.task else None
    agent = FakeEcsAgent(task=task, credential_lifetime=args.lifetime)
    port = await agent.start(args.host, args.port)
    print(f"fake ecs agent on {args.host}:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="169.254.170.2")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--task")
    parser.add_argument("--lifetime", type=float, default=6 * 3600)
    asyncio.run(_main(parser.parse_args()))
