"""The Fargate stop notice: a real `metamock serve` subprocess, SIGTERM, and a client polling meanwhile."""

from __future__ import annotations

import json
import signal
import time

from metamock.clock import parse_iso
from tests.scenarios_support import get
from tests.servers import serve

GRACE = 2.0


def test_sigterm_publishes_the_notice_serves_through_the_grace_and_exits_0() -> None:
    with serve("--stop-notice", str(GRACE)) as server:
        port, proc = server.port, server.proc
        assert get(port, "meta-data/spot/instance-action")[0] == 404
        assert "spot/" not in get(port, "meta-data/")[1].split("\n")

        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        seen: list[tuple[float, int, str]] = []
        refused_at = None
        while time.time() - sent < GRACE + 5:
            try:
                status, body = get(port, "meta-data/spot/instance-action", timeout=1.0)
            except OSError:
                refused_at = time.time() - sent
                break
            seen.append((time.time() - sent, status, body))
            time.sleep(0.05)
        code = proc.wait(timeout=10)

    assert code == 0
    assert refused_at is not None
    assert GRACE - 0.2 <= refused_at <= GRACE + 2.0, refused_at
    notices = [(t, json.loads(body)) for t, status, body in seen if status == 200]
    # The notice is up within a moment of the signal and stays up for the whole grace period.
    assert notices, seen
    assert notices[0][0] < 0.5
    assert notices[-1][0] >= GRACE - 0.3
    assert all(status == 200 for t, status, _ in seen if t >= notices[0][0])
    action = notices[0][1]
    assert action["action"] == "terminate"
    assert abs(parse_iso(action["time"]) - (sent + GRACE)) <= 1.5  # now + grace, whole seconds


def test_stop_notice_documents_during_the_grace_period() -> None:
    with serve("--stop-notice", str(GRACE)) as server:
        port, proc = server.port, server.proc
        proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 1.0
        while get(port, "meta-data/spot/instance-action")[0] != 200 and time.time() < deadline:
            time.sleep(0.02)
        assert get(port, "meta-data/autoscaling/target-lifecycle-state") == (200, "Terminated")
        assert get(port, "meta-data/spot/") == (200, "instance-action\ntermination-time")
        assert "autoscaling/" in get(port, "meta-data/")[1].split("\n")
        time_text = get(port, "meta-data/spot/termination-time")[1]
        assert json.loads(get(port, "meta-data/spot/instance-action")[1])["time"] == time_text
        assert proc.wait(timeout=10) == 0


def test_stop_notice_0_exits_at_once_and_a_second_sigterm_cuts_the_grace_short() -> None:
    with serve("--stop-notice", "0") as server:
        port, proc = server.port, server.proc
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - sent < 1.5
    with serve("--stop-notice", "30") as server:
        port, proc = server.port, server.proc
        proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 2.0
        while get(port, "meta-data/spot/instance-action")[0] != 200 and time.time() < deadline:
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - sent < 2.0
