"""netfilter without root: rendering from the rule files, privilege parsing, the state record."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metamock import netfilter
from metamock.cli import main
from metamock.errors import NetfilterError, PrivilegeError
from metamock.netfilter import privilege, render, state
from metamock.netfilter.routes import WANTED_V4, WANTED_V6
from tests.conftest import REPO
from tests.netfilter_support import assert_golden

RULE_FILES = sorted(p.name for p in (REPO / "iptables").iterdir() if p.suffix in {".nft", ".rules"})


def test_rule_files_are_shipped_from_iptables_dir() -> None:
    assert RULE_FILES == [
        "exclude-uid.nft",
        "exclude-uid.rules",
        "metamock-ipv4.rules",
        "metamock-ipv6.nft",
        "metamock-ipv6.rules",
        "metamock.nft",
    ]
    for name in RULE_FILES:  # the package reads the very same files, not a copy
        assert render.read(name) == (REPO / "iptables" / name).read_text()


@pytest.mark.parametrize("name", RULE_FILES)
def test_rule_files_have_one_parameter(name: str) -> None:
    params = set(re.findall(r"@[A-Z]+@", render.read(name)))
    tagged = {"metamock.nft", "metamock-ipv4.rules", "metamock-ipv6.rules"}
    expected = {"@UID@"} if name.startswith("exclude-uid") else {"@PORT@"}
    assert params == expected | ({"@TAG@"} if name in tagged else set())


def test_render_nft_golden() -> None:
    assert_golden("render-nft-ipv6-uids.nft", render.render_nft(1338, True, [1000, 0, 1000]))
    assert_golden("render-nft-ipv4.nft", render.render_nft(8080, False, []))


def test_render_iptables_golden() -> None:
    for family in (4, 6):
        fresh = render.render_iptables(family, 1338, [1000, 0])
        again = render.render_iptables(family, 1338, [1000, 0], delete=["-A OUTPUT -j METAMOCK", "-A X"])
        assert_golden(f"render-ipv{family}-uids.rules", fresh)
        jump = '-A OUTPUT -m comment --comment "metamock manual" -j METAMOCK\n'
        assert again == fresh.replace(jump, "-D OUTPUT -j METAMOCK\n" + jump)


def test_render_rejects_unfilled_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "read", lambda name: "-A METAMOCK -j REDIRECT --to-ports @PORT@ @X@\n")
    with pytest.raises(ValueError, match="unfilled"):
        render.render_iptables(4, 1338, [])


@pytest.mark.parametrize(
    ("capeff", "expected"),
    [
        ("000001fffeffffff", True),
        ("0000000000001000", True),
        ("0000000000000000", False),
        ("000001fffeffefff", False),
    ],
)
def test_has_net_admin(capeff: str, expected: bool, tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(f"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\nCapBnd:\t000001ffffffffff\n")
    assert privilege.has_net_admin(status) is expected
    assert privilege.effective_capabilities(status) == int(capeff, 16)


def test_capabilities_unknown_count_as_missing(tmp_path: Path) -> None:
    assert privilege.effective_capabilities(tmp_path / "absent") is None
    (tmp_path / "garbled").write_text("CapEff:\tzz\n")
    assert privilege.effective_capabilities(tmp_path / "garbled") is None
    assert not privilege.has_capability(None, privilege.CAP_NET_ADMIN)
    assert not privilege.has_net_admin(tmp_path / "absent")
    assert privilege.has_capability(1 << privilege.CAP_SYS_PTRACE, privilege.CAP_SYS_PTRACE)


def test_privilege_error_names_capability_and_alternative(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("CapEff:\t00000000a80425fb\n")  # a Fargate container's default set
    with pytest.raises(PrivilegeError) as err:
        privilege.require_net_admin(1338, status)
    message = str(err.value)
    assert "CAP_NET_ADMIN" in message
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:1338/" in message
    assert "\n" not in message
    assert err.value.exit_code == 2


def test_state_round_trip(tmp_path: Path) -> None:
    path = state.state_path(tmp_path)
    assert state.load(path) is None
    record = state.Applied(
        "iptables", 1338, True, (0, 1000), (WANTED_V4, WANTED_V6), "iptables-legacy", ("ip",)
    )
    state.save(path, record)
    assert state.load(path) == record
    ns = Path("/proc/self/ns/net").stat()
    assert path.name == f"netfilter-{ns.st_dev}-{ns.st_ino}.json"  # the control socket's netns_key
    path.write_text("{broken")
    assert state.load(path) is None  # a damaged record never blocks remove
    state.clear(path)
    state.clear(path)
    assert not path.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"port": 0}, "port 0"),
        ({"port": 70000}, "port 70000"),
        ({"port": 1338, "backend": "pf"}, "backend 'pf'"),
        ({"port": 1338, "exclude_uids": [-1]}, "uid"),
    ],
)
def test_apply_validates_before_touching_anything(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(NetfilterError, match=match):
        netfilter.apply(**kwargs)  # type: ignore[arg-type]


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["netfilter", "apply", "--port", "0"]) == 2
    assert main(["netfilter", "apply", "--exclude-uid", "no-such-user-xyz"]) == 2
    assert main(["netfilter", "flush"]) == 2
    assert "invalid" in capsys.readouterr().err
