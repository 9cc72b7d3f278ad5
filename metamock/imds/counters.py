"""What the IMDS face answered since start: counts by status, and the paths most often missed.

`metamock status` and `metamock doctor` read these to tell an operator what the software asked for
and did not get (404) or was refused (401). Memory is bounded whatever clients send: at most
`MAX_PATHS` distinct paths per status, each at most `MAX_KEY` characters; a new path once the table
is full counts under `OTHER`. Paths are counted the way the tree resolves them: the query goes,
repeated and trailing slashes collapse, and every version (`/2009-04-04`, `/latest`) counts as
`/latest`, so one client asking with two spellings is one row.

The hot path (a metadata hit) pays one attribute increment (`ok`); other answers one dict
update, and the path work happens only for 401 and 404.
"""

from __future__ import annotations

from typing import Any

from metamock.imds.versions import is_version, path_segments

MAX_PATHS = 64
MAX_KEY = 128
OTHER = "(other)"
MISSED = (404, 401)


def printable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with anything unprintable escaped: a hostile path must
    not reach a terminal or a log line as control characters."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode() for ch in text
    )


def normalise(raw_path: str) -> str:
    """The path a miss is counted under: segments as the router splits them, versions as `latest`."""
    segments = path_segments(raw_path)
    if segments and is_version(segments[0]):
        segments[0] = "latest"
    return printable("/" + "/".join(segments), MAX_KEY)


class RequestCounters:
    """Counts answers by status and keeps the most missed paths, bounded (see the module docstring)."""

    __slots__ = ("by_status", "missed", "ok")

    def __init__(self) -> None:
        self.ok = 0  # 200s of metadata hits, kept apart: the handler's hot path adds 1 here
        self.by_status: dict[int, int] = {}
        self.missed: dict[int, dict[str, int]] = {status: {} for status in MISSED}

    def count(self, status: int, raw_path: str) -> None:
        """One answer with `status` to a request for `raw_path`."""
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
        if status == 404 or status == 401:  # noqa: PLR1714 - two compares beat a tuple lookup here
            self._miss(self.missed[status], raw_path)

    @staticmethod
    def _miss(table: dict[str, int], raw_path: str) -> None:
        key = normalise(raw_path)
        if key in table:
            table[key] += 1
        elif len(table) < MAX_PATHS:
            table[key] = 1
        else:
            table[OTHER] = table.get(OTHER, 0) + 1  # the one slot past MAX_PATHS

    def top(self, status: int, n: int = 10) -> list[tuple[str, int]]:
        """The `n` paths most often answered `status`, most first (ties by path)."""
        table = self.missed.get(status, {})
        return sorted(table.items(), key=lambda item: (-item[1], item[0]))[:n]

    def statuses(self) -> dict[int, int]:
        """Answers by status since start (the hot path's `ok` included in 200)."""
        merged = dict(self.by_status)
        if self.ok:
            merged[200] = merged.get(200, 0) + self.ok
        return dict(sorted(merged.items()))

    def snapshot(self, n: int = 10) -> dict[str, Any]:
        """A JSON-ready view for the control socket."""
        statuses = self.statuses()
        return {
            "total": sum(statuses.values()),
            "by_status": {str(status): count for status, count in statuses.items()},
            "top_404": [[path, count] for path, count in self.top(404, n)],
            "top_401": [[path, count] for path, count in self.top(401, n)],
        }

    def entries(self) -> int:
        """How many paths are held in all (the bound tests check: at most (MAX_PATHS + 1) per status)."""
        return sum(len(table) for table in self.missed.values())
