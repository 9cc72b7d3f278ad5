#!/usr/bin/python3
"""Assemble the sidecar image's root filesystem from the Debian packages installed in the builder.

Run in the Dockerfile's build stage (Debian's own python3, stdlib only):

    slim-rootfs.py DEST PACKAGE...

DEST gets the files of PACKAGE... and of everything they depend on (Depends and Pre-Depends,
resolved among the installed packages, alternatives and virtual packages included), minus what
a container that runs `metamock sidecar` never uses at run time:
  - the package manager and its helpers (dpkg, apt, debconf, perl): the image is rebuilt, never
    upgraded in place, and they are what makes a Debian base 75 MB;
  - documentation, man pages, translations, shell completions, init scripts and systemd units
    (the licences, /usr/share/doc/*/copyright, stay), glibc's iconv modules, pydoc's topics.
Then the update-alternatives links of what was copied (iptables -> iptables-nft, ...), the
dynamic linker's cache for DEST (ldconfig -r), and no setuid/setgid bit anywhere.

Why not `FROM debian:bookworm-slim` in the final stage: files deleted in an upper layer still
ship in the lower one, so the final stage could never be smaller than the base plus Python.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

# Never copied even when a package depends on them: the package manager and what only its
# maintainer scripts use. Nothing in the image runs dpkg, apt or a maintainer script.
EXCLUDED_PACKAGES = {
    "apt",
    "debconf",
    "debianutils",
    "dpkg",
    "init-system-helpers",
    "install-info",
    "lsb-base",
    "perl-base",
    "sensible-utils",
    "sysvinit-utils",
    "usrmerge",
    "usr-is-merged",
}

# Paths (prefixes) never copied. /usr/share/doc/<pkg>/copyright is kept: the licences travel
# with the binaries.
EXCLUDED_PREFIXES = (
    "/usr/share/doc/",
    "/usr/share/doc-base/",
    "/usr/share/man/",
    "/usr/share/info/",
    "/usr/share/locale/",
    "/usr/share/lintian/",
    "/usr/share/bug/",
    "/usr/share/bash-completion/",
    "/usr/share/zsh/",
    "/usr/share/menu/",
    "/usr/share/applications/",
    "/usr/share/pixmaps/",
    "/usr/share/gdb/",
    "/usr/lib/systemd/",
    "/lib/systemd/",
    "/etc/init.d/",
    "/etc/logrotate.d/",
    "/etc/cron.daily/",
    "/usr/lib/python3.11/pydoc_data/",  # `help()` topics; nothing in a sidecar asks for them
    "/usr/lib/python3.11/test/",  # the few test helpers Debian leaves in the stdlib package
)
# glibc's iconv modules (8 MB): Python has its own codecs, nothing else here calls iconv.
EXCLUDED_PATTERNS = re.compile(r"^/usr/lib/[^/]+/gconv/")
KEPT = re.compile(r"^/usr/share/doc/[^/]+/copyright$")


def dpkg_status() -> dict[str, dict[str, str]]:
    """Installed packages: name -> {Depends, Pre-Depends, Provides} (architecture qualifiers dropped)."""
    fmt = "${db:Status-Abbrev}\t${Package}\t${Depends}\t${Pre-Depends}\t${Provides}\n"
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    status: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        abbrev, name, depends, predepends, provides = line.split("\t")
        if abbrev.startswith("ii"):
            status[name.split(":")[0]] = {"Depends": depends, "Pre-Depends": predepends, "Provides": provides}
    return status


def _names(field: str) -> list[list[str]]:
    """'a (>= 1) | b, c:any' -> [['a', 'b'], ['c']]"""
    groups = []
    for group in field.split(","):
        alts = [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
        if alts and alts[0]:
            groups.append(alts)
    return groups


def closure(roots: list[str], status: dict[str, dict[str, str]]) -> list[str]:
    providers: dict[str, list[str]] = {}
    for name, fields in status.items():
        providers.setdefault(name, []).append(name)
        for virtual in _names(fields["Provides"]):
            providers.setdefault(virtual[0], []).append(name)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name in EXCLUDED_PACKAGES:
            continue
        if name not in status:
            sys.exit(f"slim-rootfs: {name} is not installed in the build stage")
        seen.add(name)
        fields = status[name]
        for alts in _names(fields["Depends"]) + _names(fields["Pre-Depends"]):
            installed = [p for alt in alts for p in providers.get(alt, [])]
            if not installed:
                sys.exit(f"slim-rootfs: {name} depends on {' | '.join(alts)}, none installed")
            todo.append(installed[0])
    return sorted(seen)


def package_files(package: str) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-L", package], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [line for line in out.splitlines() if line.startswith("/")]


def wanted(path: str) -> bool:
    if KEPT.match(path):
        return True
    return not path.startswith(EXCLUDED_PREFIXES) and not EXCLUDED_PATTERNS.match(path)


def copy(src: str, dest: Path) -> None:
    """Copy one file or symlink from / into dest, keeping mode, owner and times; dirs are made."""
    info = os.lstat(src)
    if stat.S_ISDIR(info.st_mode):
        return
    target = dest / src.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        return
    if stat.S_ISLNK(info.st_mode):
        target.symlink_to(Path(src).readlink())
    else:
        shutil.copy2(src, target)
    os.lchown(target, info.st_uid, info.st_gid)


def merged_usr(dest: Path) -> None:
    """The same /bin -> usr/bin style links as the builder (Debian bookworm is merged-/usr)."""
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        src = Path("/") / top
        if src.is_symlink():
            link = src.readlink()
            (dest / top).symlink_to(link)
            (dest / top).parent.joinpath(link).mkdir(parents=True, exist_ok=True)


def alternatives(dest: Path) -> None:
    """Links like /usr/sbin/iptables -> /etc/alternatives/iptables -> /usr/sbin/iptables-nft,
    made by maintainer scripts (so not in any package's file list), for what was copied."""
    alt_dir = Path("/etc/alternatives")
    for entry in sorted(alt_dir.iterdir()) if alt_dir.is_dir() else []:
        if not entry.is_symlink():  # the README
            continue
        chosen = str(entry.readlink())
        if not (dest / chosen.lstrip("/")).exists():
            continue
        copy(str(entry), dest)
    for directory in ("/usr/bin", "/usr/sbin"):
        for entry in sorted(Path(directory).iterdir()):
            if (
                entry.is_symlink()
                and str(entry.readlink()).startswith("/etc/alternatives/")
                and (dest / "etc/alternatives" / entry.name).is_symlink()
            ):
                copy(str(entry), dest)


def no_setuid(dest: Path) -> None:
    for root, _dirs, files in os.walk(dest):
        for name in files:
            path = Path(root) / name
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                path.chmod(mode & ~(stat.S_ISUID | stat.S_ISGID) & 0o7777)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: slim-rootfs.py DEST PACKAGE...")
    dest, roots = Path(sys.argv[1]), sys.argv[2:]
    dest.mkdir(parents=True)
    merged_usr(dest)
    packages = closure(roots, dpkg_status())
    for package in packages:
        for path in package_files(package):
            if wanted(path) and os.path.lexists(path):
                copy(path, dest)
    alternatives(dest)
    no_setuid(dest)
    # The dynamic linker's cache for exactly these libraries (the multiarch paths come from
    # libc6's /etc/ld.so.conf.d, copied above).
    subprocess.run(["ldconfig", "-r", str(dest)], check=True, timeout=60)
    print("slim-rootfs: " + " ".join(packages))


if __name__ == "__main__":
    main()
