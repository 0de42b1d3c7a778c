"""User-facing errors: one clear line, non-zero exit, no traceback (the CLI catches these)."""

from __future__ import annotations

import shutil


class UserError(Exception):
    """Something the user can fix: bad input, missing tool, unknown board. Message is one line."""

    exit_code = 2


def require_tool(name: str, apt_package: str) -> str:
    """Path of executable `name`, or a UserError telling which Debian package provides it."""
    path = shutil.which(name)
    if path is None:
        raise UserError(f"{name} not found on PATH: install it with `apt-get install {apt_package}`")
    return path
