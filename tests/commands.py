"""The system commands the tests need, found or the test fails saying how to get them.

``make deps`` installs every one of them (Debian / Raspberry Pi OS packages); a test never skips
because one is missing: it fails with the package to install.
"""

from __future__ import annotations

import shutil

import pytest


def require_command(name: str, package: str) -> str:
    """The path of ``name``; fails the test naming the Debian ``package`` when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"{name} is not installed (Debian package {package!r}): run `make deps` "
            f"(as root or with sudo) or `apt-get install -y {package}`"
        )
    return path
