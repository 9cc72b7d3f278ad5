"""The metadata API versions EC2 lists at `/` and accepts as the first path segment.

Owned by the HTTP face (it routes on them); kept apart from the translation so that serving
HTTP does not import the translation, the settings and the scenarios for one constant.
"""

from __future__ import annotations

import re

API_VERSIONS = (
    "1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15", "2008-02-01",
    "2008-09-01", "2009-04-04", "2011-01-01", "2011-05-01", "2012-01-12", "2014-02-25",
    "2014-11-05", "2015-10-20", "2016-04-19", "2016-06-30", "2016-09-02", "2018-03-28",
    "2018-08-17", "2018-09-24", "2019-10-01", "2020-10-27", "2021-01-03", "2021-03-23",
    "2021-07-15", "2022-09-24", "2024-04-11", "latest",
)  # fmt: skip

_KNOWN = frozenset(API_VERSIONS)
_DATED = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # a date EC2 does not list still resolves


def is_version(segment: str) -> bool:
    """True when `segment`, as a path's first, names the metadata tree (`latest` or a date)."""
    return segment in _KNOWN or _DATED.match(segment) is not None


def path_segments(raw_path: str) -> list[str]:
    """A raw request path's segments: the query gone, repeated and trailing slashes collapsed."""
    query = raw_path.find("?")
    raw = raw_path[:query] if query >= 0 else raw_path
    return [s for s in raw.split("/") if s]
