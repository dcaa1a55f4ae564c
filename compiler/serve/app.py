"""The HTTP routes (Starlette): TensorFlow Serving's REST API, kspec's `/predict`, health, the page.

    GET  /v1/models/NAME                  status (TF Serving's model_version_status)
    GET  /v1/models/NAME/metadata         signature (inputs, outputs) + kspec's facts (classes, metrics...)
    POST /v1/models/NAME:predict          {"instances": [...]} or {"inputs": ...} -> predictions / outputs
    POST /predict                         {"records": [...]} -> the table `kspec predict` writes, per record
    GET  /healthz, /readyz                alive; ready (model loaded and warmed up)
    GET  /, /curves.png                   the page, the run's learning curves

Every failure answers `{"error": MESSAGE}` with a status (400 bad request, 404 unknown model,
413 too large, 503 loading or busy, 500 a bug); nothing a client sends reaches it as a traceback.
(`/versions/1` may be inserted after NAME, as TF Serving allows.)
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from ..train.predict import table
from .batcher import Batcher, Busy
from .codec import Decoder, RequestError, parse_json
from .model import RunInfo, ServedModel
from .page import page

VERSION = "1"
THREADPOOL_BODY = 1 << 16          # bodies larger than this are decoded off the event loop

_DT = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF", "bfloat16": "DT_BFLOAT16",
       "int32": "DT_INT32", "int64": "DT_INT64", "int8": "DT_INT8", "uint8": "DT_UINT8", "string": "DT_STRING",
       "bool": "DT_BOOL"}


@dataclass
class State:
    run: RunInfo
    name: str
    decoder: Decoder
    max_body: int
    batcher: Batcher | None = None
    model: ServedModel | None = None
    failed: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.model is not None and self.batcher is not None


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, allow_nan=False, separators=(",", ":")), status,
                    media_type="application/json")


def _error(message: str, status: int) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    response = _json({"error": message}, status)
    if headers:
        response.headers.update(headers)
    return response


def make_app(state: State, on_startup=(), on_shutdown=()) -> Starlette:
    async def body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > state.max_body:
            raise RequestError(f"the body is {int(length):,} bytes, more than the limit of {state.max_body:,} "
                               "(--max-body-bytes)", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > state.max_body:
                raise RequestError(f"the body is more than the limit of {state.max_body:,} bytes "
                                   "(--max-body-bytes)", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    def check_model(request: Request) -> None:
        name = request.path_params.get("name")
        if name is not None and ":" in name:
            verb = name.split(":", 1)[1]
            if verb == "predict":
                raise RequestError(f"{request.url.path} takes POST", status=405)
            raise RequestError(f"no method ':{verb}' here; this server answers :predict", status=404)
        if name is not None and name != state.name:
            raise RequestError(f"no model named {name!r} here; this server serves {state.name!r}", status=404)
        version = request.path_params.get("version")
        if version is not None and version != VERSION:
            raise RequestError(f"model {state.name!r} has version {VERSION} only, not {version!r}", status=404)

    def check_ready() -> None:
        if state.failed:
            raise RequestError(f"the model could not be loaded: {state.failed}", status=503)
        if not state.ready:
            raise RequestError("the model is still loading; try again shortly (GET /readyz says when)", status=503)

    async def predict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert state.batcher is not None
        try:
            return await state.batcher.submit(arrays)
        except Busy:
            raise RequestError("the server is busy: its queue is full (--max-queue); try again shortly",
                               status=503) from None

    async def decode(request: Request, how):
        data = await body(request)
        if len(data) > THREADPOOL_BODY:
            return await run_in_threadpool(lambda: how(parse_json(data)))
        return how(parse_json(data))

    def handler(fn):
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except RequestError as exc:
                return _error(exc.message, exc.status)
            except ClientDisconnect:
                return Response(status_code=499)
            except Exception as exc:      # a bug in kspec: answer, keep serving, no traceback to the client
                return _error(f"internal error: {type(exc).__name__}: {exc}", 500)
        return wrapped

    @handler
    async def tf_predict(request: Request) -> Response:
        check_model(request)
        check_ready()
        arrays, form = await decode(request, state.decoder.tf_serving)
        outputs = await predict(arrays)
        names = list(outputs)
        if form == "inputs":
            value = outputs[names[0]].tolist() if len(names) == 1 else {k: v.tolist() for k, v in outputs.items()}
            return _json({"outputs": value})
        if len(names) == 1:
            return _json({"predictions": outputs[names[0]].tolist()})
        lists = {k: v.tolist() for k, v in outputs.items()}
        n = len(next(iter(lists.values())))
        return _json({"predictions": [{k: lists[k][j] for k in names} for j in range(n)]})

    @handler
    async def records(request: Request) -> Response:
        check_ready()
        arrays = await decode(request, state.decoder.records)
        outputs = await predict(arrays)
        ordered = {o: outputs[o] for o in state.run.outputs}
        columns = table(ordered, state.run.info, prefix=len(ordered) > 1)
        n = len(next(iter(columns.values())))
        rows = [{c: values[j] for c, values in columns.items()} for j in range(n)]
        return _json({"predictions": rows, "columns": list(columns)})

    @handler
    async def status(request: Request) -> Response:
        check_model(request)
        if state.ready:
            code, message, where = "OK", "", "AVAILABLE"
        elif state.failed:
            code, message, where = "UNKNOWN", state.failed, "END"
        else:
            code, message, where = "OK", "", "LOADING"
        return _json({"model_version_status": [{"version": VERSION, "state": where,
                                                "status": {"error_code": code, "error_message": message}}]})

    @handler
    async def metadata(request: Request) -> Response:
        check_model(request)
        check_ready()
        return _json(state.meta)

    @handler
    async def healthz(request: Request) -> Response:
        return _json({"status": "alive"})

    @handler
    async def readyz(request: Request) -> Response:
        if state.batcher is not None and state.model is not None:
            stats = state.batcher.stats
            return _json({"status": "ready", "model": state.name, "batches": stats.batches,
                          "examples": stats.examples, "largest_batch": stats.largest, "traces": state.model.traces})
        if state.failed:
            return _json({"status": "failed", "error": state.failed}, 503)
        return _json({"status": "loading", "model": state.name}, 503)

    async def index(request: Request) -> Response:
        return HTMLResponse(page(state.name))

    @handler
    async def curves(request: Request) -> Response:
        from ..rundir import RunDir

        path = RunDir(state.run.path).curves
        if not path.is_file():
            raise RequestError("this run has no learning curves", status=404)
        return FileResponse(path, media_type="image/png")

    prefix = "/v1/models/{name}"
    routes = [
        Route("/", index, methods=["GET"]),
        Route("/curves.png", curves, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/predict", records, methods=["POST"]),
    ]
    for base in (prefix, prefix + "/versions/{version}"):
        routes += [Route(base + ":predict", tf_predict, methods=["POST"]),
                   Route(base + "/metadata", metadata, methods=["GET"]),
                   Route(base, status, methods=["GET"])]

    async def not_found(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        message = "method not allowed here" if code == 405 else f"no such endpoint: {request.url.path}"
        return _error(message, code)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for fn in on_startup:
            await fn()
        try:
            yield
        finally:
            for fn in on_shutdown:
                await fn()

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})


def metadata_of(state: State, model: ServedModel, versions: dict[str, str]) -> dict[str, Any]:
    """TF Serving's metadata response, plus a `kspec` section (classes, record fields, metrics, hash)."""
    signature = model.signature()

    def tensor(name: str, t: dict) -> dict:
        return {"dtype": _DT.get(t["dtype"], "DT_INVALID"), "name": f"serving_default_{name}:0",
                "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in t["shape"]], "unknown_rank": False}}

    run = state.run
    outputs = [{"name": o, "task": run.task(o), **({"classes": run.class_names(o)} if run.task(o) == "classification"
                                                     else {})} for o in run.outputs]
    return {
        "model_spec": {"name": state.name, "signature_name": "", "version": VERSION},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": {n: tensor(n, t) for n, t in signature["inputs"].items()},
            "outputs": {n: tensor(n, t) for n, t in signature["outputs"].items()},
            "method_name": "tensorflow/serving/predict"}}}},
        "kspec": {
            "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype,
                        "image": None if i.image is None else {"size": list(i.image[0]), "color_mode": i.image[1]},
                        "features": list(i.features)} for i in run.inputs],
            "outputs": outputs,
            "fields": state.decoder.fields(),
            "metrics": _finite(run.metrics),
            "spec_hash": f"sha256:{run.spec_hash}",
            "versions": versions,
            "has_curves": run.has_curves,
        },
    }


def _finite(value: Any) -> Any:
    """metrics.json with NaN/infinity as null: the answer is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
