"""`metamock netfilter apply|remove|status`: the redirect of 169.254.169.254 to the server."""

from __future__ import annotations

import argparse
import os
import sys

from metamock.settings import add_port_argument, client_port


def _uid(text: str) -> int:
    try:
        uid = int(text)
    except ValueError:
        import pwd  # a user name is a convenience; most callers pass numbers

        try:
            return pwd.getpwnam(text).pw_uid
        except KeyError:
            raise argparse.ArgumentTypeError(f"no such user or uid: {text!r}") from None
    if uid < 0:
        raise argparse.ArgumentTypeError(f"uid must be >= 0: {text!r}")
    return uid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["apply", "remove", "status"])
    add_port_argument(parser)
    parser.add_argument(
        "--backend",
        choices=["auto", "nft", "iptables"],
        default="auto",
        help="rule backend (auto: nft when usable, else iptables; "
        "$METAMOCK_IPTABLES picks iptables, iptables-nft or iptables-legacy)",
    )
    parser.add_argument(
        "--ipv6",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also redirect [fd00:ec2::254]:80 (default: on)",
    )
    parser.add_argument(
        "--exclude-uid",
        type=_uid,
        action="append",
        default=[],
        metavar="UID",
        help="do not redirect traffic of this user (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    from metamock import netfilter

    environ = dict(os.environ)  # the edge: PATH and METAMOCK_IPTABLES go in as a mapping
    port = client_port(args.port, environ)
    if args.action == "apply":
        backend = netfilter.apply(port, args.backend, args.ipv6, args.exclude_uid, environ=environ)
        print(f"netfilter applied with backend {backend}")
        print(netfilter.status(environ=environ, probe=False).summary)
        return 0
    if args.action == "remove":
        removed = netfilter.remove(environ=environ)
        print("netfilter removed" if removed else "netfilter: nothing to remove")
        return 0
    st = netfilter.status(environ=environ)
    print(st.summary)
    if st.rules:
        sys.stdout.write(st.rules)
    if not st.known:
        return 2  # the contract: "cannot tell" is neither applied (0) nor absent (1)
    return 0 if st.working else 1  # complete, at the recorded port, and the probe passed
