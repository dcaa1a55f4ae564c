import os
import sys

# `python -m compiler` puts the working directory first on sys.path; a `.py` file there (one shipped
# inside a run folder, say) would then shadow any module kspec or a --plugin imports. Trust comes from
# the command line only (compiler/trust.py): drop it, as the `kspec` console script never adds it.
# (A folder named in PYTHONPATH stays on the path: that is how to import plugins from one on purpose.)
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .cli import main  # noqa: E402

sys.exit(main())
