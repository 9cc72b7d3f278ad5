"""The metadata tree: one immutable value answering both lookups and listings.

Built once from a nested mapping (dict = directory, str = text, bytes = octet-stream, `Leaf` = explicit),
flattened into path -> Node with the response bytes pre-rendered. A listing is rendered from the same
children that resolve, so the two can never disagree.

A tree holding credentials ends when they expire: `until(expires, then)` pairs it with the tree
built without them, and `at(now)` is the one to answer from at that instant. Swapping whole
trees, not leaves, is what keeps every listing resolving at every instant, the expiry included:
`meta-data/` stops naming `iam/`, and `iam/info` goes with the role, at the same instant.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from multidict import CIMultiDict

TEXT = "text/plain"
OCTETS = "application/octet-stream"


@dataclass(frozen=True)
class Leaf:
    """An explicit leaf: a body (or a function computing it once, lazily) and its content type."""

    body: bytes | Callable[[], bytes]
    content_type: str = TEXT
    expires: float | None = None  # epoch seconds after which the leaf must not be served


# Headers every answer carries, as EC2 sends them (metamock.runtime gives aiohttp's own answers
# the same banner).
SERVER = "EC2ws"
BASE_HEADERS = {"Server": SERVER, "Accept-Ranges": "none"}


@dataclass
class Node:
    content_type: str
    is_dir: bool
    expires: float | None = None
    # The response headers, rendered once per tree (shared between nodes of one content type);
    # a CIMultiDict because aiohttp copies one of those far faster than it builds one from a dict.
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    # The body, or None for a lazy leaf not rendered yet. Bodies may be credentials: never in a repr.
    rendered: bytes | None = field(default=None, repr=False)
    _render: Callable[[], bytes] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def body(self) -> bytes:
        """The body, rendering a lazy leaf here and now (blocking: see `render`)."""
        if self.rendered is None:
            assert self._render is not None
            with self._lock:
                if self.rendered is None:
                    self.rendered = self._render()
        return self.rendered

    async def render(self) -> bytes:
        """The body, a lazy leaf rendered in a thread: its first render may take long (the
        identity signatures make an RSA key), and the event loop keeps serving meanwhile."""
        if self.rendered is not None:
            return self.rendered
        return await asyncio.to_thread(lambda: self.body)


class Tree:
    """Immutable once built; `get("meta-data/instance-id")` answers a path without version or slashes."""

    __slots__ = ("_nodes", "built_at", "expires", "then")

    def __init__(
        self,
        nodes: dict[str, Node],
        built_at: float = 0.0,
        *,
        expires: float | None = None,
        then: Tree | None = None,
    ) -> None:
        self._nodes = nodes
        self.built_at = built_at
        self.expires = expires  # epoch seconds from which `then` answers instead
        self.then = then

    def until(self, expires: float, then: Tree) -> Tree:
        """This tree until `expires` (epoch seconds, exclusive), `then` from that instant."""
        return Tree(self._nodes, self.built_at, expires=expires, then=then)

    def at(self, now: float) -> Tree:
        """The tree to answer from at `now`: the same predicate as a leaf's `expires`."""
        tree = self
        while tree.expires is not None and now >= tree.expires:
            tree = tree.then if tree.then is not None else _EMPTY
        return tree

    @classmethod
    def build(cls, root: Mapping[str, Any], built_at: float = 0.0) -> Tree:
        nodes: dict[str, Node] = {}
        _flatten(root, "", nodes)
        last_modified = formatdate(built_at, usegmt=True)
        by_type: dict[str, CIMultiDict[str]] = {}
        for node in nodes.values():
            headers = by_type.get(node.content_type)
            if headers is None:
                headers = CIMultiDict(
                    {**BASE_HEADERS, "Content-Type": node.content_type, "Last-Modified": last_modified}
                )
                by_type[node.content_type] = headers
            node.headers = headers
        return cls(nodes, built_at)

    def get(self, path: str) -> Node | None:
        return self._nodes.get(path)

    def paths(self) -> list[str]:
        return sorted(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


_EMPTY = Tree({})


def _flatten(directory: Mapping[str, Any], prefix: str, nodes: dict[str, Node]) -> bool:
    """Add `directory` and everything below; return False when it ends up empty (then it is absent)."""
    entries: list[str] = []
    for name in sorted(directory):
        value = directory[name]
        if not name or "/" in name:
            raise ValueError(f"bad tree key {name!r} under {prefix!r}")
        path = f"{prefix}/{name}" if prefix else name
        if isinstance(value, Mapping):
            if _flatten(value, path, nodes):
                entries.append(name + "/")
        elif value is None:
            continue
        else:
            nodes[path] = _leaf_node(value)
            entries.append(name)
    if not entries and prefix:
        return False
    nodes[prefix] = Node(TEXT, True, rendered="\n".join(entries).encode())
    return True


def _leaf_node(value: Any) -> Node:
    if isinstance(value, Leaf):
        if callable(value.body):
            return Node(value.content_type, False, value.expires, _render=value.body)
        return Node(value.content_type, False, value.expires, rendered=value.body)
    if isinstance(value, bytes):
        return Node(OCTETS, False, rendered=value)
    if isinstance(value, str):
        return Node(TEXT, False, rendered=value.encode())
    if isinstance(value, bool):
        return Node(TEXT, False, rendered=str(value).lower().encode())
    if isinstance(value, int | float):
        return Node(TEXT, False, rendered=str(value).encode())
    raise TypeError(f"cannot serve a {type(value).__name__}")
