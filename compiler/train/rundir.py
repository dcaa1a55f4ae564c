"""Moved to `compiler.rundir` (one run-directory module for every stage); this name re-exports it
for code written before the move."""

from ..rundir import *  # noqa: F401,F403
from ..rundir import _crash_point, _temp_path, _write_error  # noqa: F401
