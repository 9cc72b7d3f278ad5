"""The report: one line per check, JSON per the contract, colour only when asked, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from metamock.doctor.report import (
    Check,
    Redactor,
    Status,
    exit_code,
    failed,
    passed,
    render_human,
    render_json,
    skipped,
    warned,
)

GOLDEN = Path(__file__).parent / "golden" / "doctor"

SAMPLE = [
    passed("platform", "Fargate (from AWS_EXECUTION_ENV and the ECS/EKS variables)"),
    warned("dev-log", "/dev/log is missing", "run a syslog daemon"),
    failed("server", "nothing listens on 127.0.0.1:1338", "start `metamock serve`"),
    skipped("sts", "--offline: AWS not called"),
]


def test_human_output_matches_golden() -> None:
    assert render_human(SAMPLE) == (GOLDEN / "report.txt").read_text()


def test_json_output_matches_golden_and_contract_shape() -> None:
    text = render_json(SAMPLE)
    assert text == (GOLDEN / "report.json").read_text()
    doc = json.loads(text)
    assert list(doc) == ["checks"]
    for item in doc["checks"]:
        assert set(item) == {"name", "status", "detail", "fix"}
        assert item["status"] in {"pass", "warn", "fail", "skip"}


def test_colour_only_when_asked() -> None:
    assert "\033[" not in render_human(SAMPLE)
    coloured = render_human(SAMPLE, colour=True)
    assert "\033[31;1mfail\033[0m" in coloured
    assert len(coloured.splitlines()) == len(SAMPLE) + 1


def test_one_line_per_check_even_with_newlines_in_detail() -> None:
    lines = render_human([failed("x", "two\nlines", "fix\nit")]).splitlines()
    assert lines[0] == "fail  x  two lines -> fix: fix it"


def test_exit_code_is_one_only_when_something_failed() -> None:
    assert exit_code(SAMPLE) == 1
    assert exit_code([c for c in SAMPLE if c.status is not Status.FAIL]) == 0
    assert exit_code([]) == 0


def test_redactor_masks_registered_values_and_ignores_short_ones() -> None:
    redactor = Redactor()
    redactor.add("s3cr3t-value-123")
    redactor.add("abc")
    redactor.add(None)
    assert redactor.scrub("x s3cr3t-value-123 abc") == "x **** abc"
    assert "s3cr3t" not in repr(redactor)


def test_check_is_a_plain_value() -> None:
    assert Check("a", Status.PASS, "d") == passed("a", "d")
