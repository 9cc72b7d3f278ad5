"""Golden-file comparison: `assert_golden("area/name.txt", text)`; UPDATE_GOLDEN=1 rewrites."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def assert_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"golden file {path} missing; run with UPDATE_GOLDEN=1 once and review it"
    expected = path.read_text()
    assert actual == expected, f"output differs from {path}"
