"""Start-up and shutdown of `kspec serve`: listen at once, load the model in the background, stop cleanly.

The socket is bound here (so a port in use is a kspec error, and `--port 0` picks a free one,
printed), then Uvicorn serves it. The model is loaded and warmed up in a background thread:
meanwhile /healthz answers 200 and /readyz and the predict routes 503. SIGTERM or Ctrl-C
(Uvicorn's handlers) stop accepting connections, let the requests in flight finish (the
batcher drains its queue), then exit 0. A model that cannot be loaded stops the server with
its error and exit 2.
"""

from __future__ import annotations

import gc
import math
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

from ..errors import Diagnostic
from . import ServeError, check_available
from . import defaults as d
from .codec import Decoder, Limits
from .model import read_run


@dataclass
class Options:
    run: str
    host: str = "127.0.0.1"
    port: int = d.PORT
    model_name: str | None = None
    max_batch_size: int = d.MAX_BATCH_SIZE
    max_latency_ms: float = d.MAX_LATENCY_MS
    max_queue: int = d.MAX_QUEUE
    max_body_bytes: int = d.MAX_BODY_BYTES
    max_image_pixels: int = d.MAX_IMAGE_PIXELS
    trust: bool = False


def _check(options: Options) -> None:
    for name, value, low in (("--max-batch-size", options.max_batch_size, 1), ("--max-queue", options.max_queue, 1),
                             ("--max-body-bytes", options.max_body_bytes, 1),
                             ("--max-image-pixels", options.max_image_pixels, 1), ("--port", options.port, 0)):
        if value < low:
            raise ServeError(Diagnostic(f"{name} must be at least {low}, got {value}"))
    if options.port > 65535:
        raise ServeError(Diagnostic(f"--port must be at most 65535, got {options.port}"))
    if not (math.isfinite(options.max_latency_ms) and 0 <= options.max_latency_ms <= 10_000):
        raise ServeError(Diagnostic(f"--max-latency-ms must be between 0 and 10000, got {options.max_latency_ms}"))


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(Diagnostic(f"cannot listen on {host}: {exc.strerror or exc}", hint="check --host")) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(Diagnostic(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                                    hint="choose another --port (0 picks a free one)")) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _ignore(signum, frame) -> None:
    pass


def serve(options: Options) -> int:
    check_available()
    _check(options)
    run = read_run(options.run)                        # a wrong RUN fails here, before TensorFlow
    import uvicorn

    from .app import State, make_app, metadata_of
    from .batcher import Batcher

    limits = Limits(max_examples=max(d.MAX_EXAMPLES, options.max_batch_size), max_values=d.MAX_VALUES,
                    max_image_pixels=options.max_image_pixels)
    state = State(run, options.model_name or run.name, Decoder(run.inputs, limits), options.max_body_bytes)
    sock = _bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    box: dict = {}

    def load() -> None:
        from ..cli import import_tensorflow
        from .model import ServedModel, load_failed, versions

        started = time.monotonic()
        try:
            import_tensorflow()
            model = ServedModel(run, trust=options.trust)
            model.warm_up(tuple(sorted({1, options.max_batch_size})))
            state.meta = metadata_of(state, model, versions())
            gc.collect()
            gc.freeze()       # TensorFlow's and Keras's many long-lived objects: out of every later GC pass
            batcher = Batcher(model.run_batch, options.max_batch_size, options.max_latency_ms / 1000,
                              options.max_queue)
            box["loop"].call_soon_threadsafe(_ready, batcher, model)
            print(f"ready: {state.name} loaded and warmed up in {time.monotonic() - started:.1f}s", flush=True)
        except BaseException as exc:                   # reported, then the server stops with exit 2
            state.failed = load_failed(exc)
            print(state.failed, file=sys.stderr, flush=True)
            server.should_exit = True

    def _ready(batcher, model) -> None:
        batcher.start()
        state.batcher = batcher
        state.model = model

    async def startup() -> None:
        import asyncio

        box["loop"] = asyncio.get_running_loop()
        threading.Thread(target=load, name="kspec-load", daemon=True).start()

    async def shutdown() -> None:
        if state.batcher is not None:
            await state.batcher.stop()

    app = make_app(state, on_startup=[startup], on_shutdown=[shutdown])
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=d.GRACEFUL_SECONDS, server_header=False)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {state.name} from {run.path} on http://{shown}:{port}/ "
          f"(TF Serving REST API at /v1/models/{state.name}; loading the model...)", flush=True)
    # Uvicorn handles SIGTERM/SIGINT itself (a graceful stop), then re-raises the signal to the handler
    # that was there before: make that one a no-op, so a graceful stop is a normal exit 0.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if state.failed:
        return 2
    print("kspec serve: stopped", flush=True)
    return 0
