"""Running the rule tools: argument lists, timeouts, and failures as one-line NetfilterErrors."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from metamock.errors import NetfilterError

TIMEOUT = 20.0  # seconds; iptables waits at most 10 s for the xtables lock (-w 10)
# "iptables-restore v1.8.9 (nf_tables): " opens the tools' messages; the reason follows it, or
# stands on the next lines ("line 3 failed", "Error occurred at line: 4").
_BANNER = re.compile(r"^\S+ v\d+(?:\.\d+)*(?: \([^)]*\))?:?\s*")
_HELP = re.compile(r"^Try `.*' for more information\.$")


@dataclass(frozen=True)
class Tools:
    """Where the rule binaries are looked up: the PATH of the calling environment."""

    path: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None) -> Tools:
        return cls(path=None if environ is None else environ.get("PATH"))

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.path)

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` (argv[0] looked up on our PATH); raise NetfilterError when it fails and `check`."""
        exe = self.which(argv[0])
        if exe is None:
            raise NetfilterError(f"{argv[0]}: command not found")
        try:
            done = subprocess.run(
                [exe, *argv[1:]],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NetfilterError(f"{' '.join(argv)}: timed out after {TIMEOUT:.0f} s") from exc
        except OSError as exc:
            raise NetfilterError(f"{' '.join(argv)}: {exc}") from exc
        if check and done.returncode != 0:
            raise NetfilterError(f"{' '.join(argv)}: {reason(done.stderr) or f'exit {done.returncode}'}")
        return done

    def ok(self, argv: Sequence[str]) -> bool:
        """True when `argv` exists and exits 0 (used for probes such as `nft list tables`)."""
        try:
            return self.run(argv, check=False).returncode == 0
        except NetfilterError:
            return False


def reason(text: str) -> str:
    """A tool's stderr as one line: its version banner and help hint dropped, the rest joined."""
    parts = []
    for raw in text.splitlines():
        line = _BANNER.sub("", raw.strip())
        if line and not _HELP.match(line):
            parts.append(line)
    return "; ".join(parts)
