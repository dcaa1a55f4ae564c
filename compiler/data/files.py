"""Open data files safely: regular files only, and never a read that blocks or never ends.

`csv: /dev/zero` would read until memory runs out and a FIFO would block forever,
so every data file is checked with `os.stat` (which follows symlinks, so a broken
link is reported as such) before it is opened, and opened with O_NONBLOCK so that
a FIFO swapped in between the check and the open still cannot hang the run.
"""

from __future__ import annotations

import os
import stat

from .table import file_error


def check_regular(path: str, what: str = "file", hint: str = "") -> os.stat_result:
    """The file's stat, or a DataError naming what is wrong with it (missing, broken link, not a file)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise file_error(path, f"{what} is a broken symbolic link (it points to "
                             f"{os.readlink(path)!r}, which does not exist)", hint=hint) from None
        raise file_error(path, f"{what} not found", hint=hint) from None
    except OSError as exc:
        raise file_error(path, f"cannot read {what}: {exc.strerror or exc}", hint=hint) from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise file_error(path, f"{what} is {kind}; kspec reads data from regular files only", hint=hint)
    return info


def read_bytes(path: str, what: str = "file", limit: int | None = None, hint: str = "") -> bytes:
    """The whole content of a regular file (at most `limit` bytes), opened without blocking."""
    check_regular(path, what, hint)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise file_error(path, f"cannot read {what}: {exc.strerror or exc}", hint=hint) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):       # swapped for something else since the check
            raise file_error(path, f"{what} is not a regular file; kspec reads data from regular files only")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read() if limit is None else fh.read(limit)
    except OSError as exc:
        raise file_error(path, f"cannot read {what}: {exc.strerror or exc}", hint=hint) from None
    finally:
        os.close(fd)
