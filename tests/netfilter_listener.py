"""A stand-in IMDS for netfilter tests: `python -m tests.netfilter_listener --host H --port P --body B`.

Answers every GET with B (so `/latest/meta-data/instance-id` works), every PUT with a token (so
`netfilter status`'s probe passes through it) and prints "ready" once it listens; `--host ::` listens on IPv4 and IPv6 like metamock's 127.0.0.1 + ::1.
"""

from __future__ import annotations

import argparse
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="::")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", required=True)
    args = parser.parse_args()
    body = args.body.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:
            token = b"stand-in-token"
            self.send_response(200)
            self.send_header("Content-Length", str(len(token)))
            self.end_headers()
            self.wfile.write(token)

        def log_message(self, *_: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in args.host else socket.AF_INET

        def server_bind(self) -> None:
            if self.address_family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    with Server((args.host, args.port), Handler) as server:
        print("ready", flush=True)
        sys.stdout.close()
        server.serve_forever()


if __name__ == "__main__":
    main()
