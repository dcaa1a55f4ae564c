"""`kspec serve RUN`: a run directory behind TensorFlow Serving's REST API, with micro-batching and a page.

    codec.py    JSON request bodies -> one array per model input, with kspec's own 400 messages
    images.py   `{"b64": ...}` image bytes -> pixels, as the data stage reads image files
    model.py    the run's model behind one compiled `tf.function` (no retracing per batch size)
    batcher.py  concurrent requests gathered into batches (--max-batch-size, --max-latency-ms)
    app.py      the routes (Starlette): TF Serving's /v1/models/NAME..., /predict, /healthz, /readyz, /
    page.py     the page at `/` (plain HTML and a little JavaScript)
    main.py     start-up (model loaded in the background: /readyz says when) and SIGTERM (Uvicorn)

Starlette and Uvicorn are an optional extra (`pip install kspec[serve]`); nothing here imports
them, TensorFlow or Keras at module level except app.py and main.py.
"""

from __future__ import annotations

from ..errors import Diagnostic, KspecError

EXTRA = "pip install 'kspec[serve]'"


class ServeError(KspecError):
    """`kspec serve` cannot start (no such run, missing extra, port in use...). Exit 2."""

    exit_code = 2


def check_available() -> None:
    """Starlette and Uvicorn are installed, or a ServeError that says how to get them."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ServeError(Diagnostic(f"kspec serve needs Starlette and Uvicorn: {exc}", hint=EXTRA)) from None
