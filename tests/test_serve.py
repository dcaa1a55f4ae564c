"""`kspec serve`: real server processes on free loopback ports, real trained runs, a real browser.

One module fixture trains three tiny runs side by side (iris from CSV-like feature columns, an
image-folder run, a two-input two-output npz run) and starts a server for each; predictions
are compared with a real `kspec predict` on the same inputs.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import Server, env, kspec_cmd, train_runs  # noqa: E402

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

slow = pytest.mark.slow

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [4.8, 3.4, 1.6, 0.2]]
IRIS_FIELDS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    runs = train_runs(root)
    # a copy of the iris run whose spec.yaml names a plugin that must never be imported
    trap = root / "trap"
    trap.mkdir()
    (trap / "evil_plugin.py").write_text(f"open({str(root / 'imported')!r}, 'w').write('x')\n")
    plugged = root / "run-plugged"
    shutil.copytree(runs["iris"], plugged)
    text = (plugged / "spec.yaml").read_text()
    (plugged / "spec.yaml").write_text(text.replace("\nseed:", "\nplugins: [evil_plugin]\nseed:", 1))
    servers = {name: Server(run) for name, run in runs.items()}
    slowq = Server(plugged, "--max-queue", "1", "--max-latency-ms", "1500", "--max-batch-size", "64",
                   "--max-body-bytes", "2000", "--model-name", "slow")
    stopper = Server(plugged, "--max-latency-ms", "1500", "--max-batch-size", "64", "--model-name", "slow")
    first = {name: _first_answers(s) for name, s in servers.items()}
    urls = {name: s.ready() for name, s in servers.items()}
    yield {"root": root, "runs": runs, "servers": servers, "urls": urls, "first": first, "slowq": slowq,
           "stopper": stopper, "plugged": plugged}
    for s in [*servers.values(), slowq, stopper]:
        s.stop()


def _first_answers(server: Server) -> tuple[int, int]:
    """/readyz and a predict while the model is still loading (TensorFlow takes seconds to import)."""
    url = server.listening()
    ready = httpx.get(url + "/readyz", timeout=30).status_code
    predict = httpx.post(url + "/predict", json={"records": []}, timeout=30).status_code
    return ready, predict


def _kspec_predict(run: Path, path: Path) -> list[dict]:
    result = subprocess.run(kspec_cmd("predict", run, path), env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def _same_table(served_rows: list[dict], predicted: list[dict]) -> None:
    assert len(served_rows) == len(predicted)
    for mine, theirs in zip(served_rows, predicted):
        assert list(mine) == list(theirs)
        for column, value in theirs.items():
            if isinstance(mine[column], str):
                assert mine[column] == value, column
            else:
                assert mine[column] == pytest.approx(float(value), rel=2e-5, abs=2e-6), column


# -- predictions equal `kspec predict` ------------------------------------------------------------

@slow
def test_tabular_predictions_equal_kspec_predict(served, tmp_path):
    url, run = served["urls"]["iris"], served["runs"]["iris"]
    rows_csv = tmp_path / "flowers.csv"
    rows_csv.write_text(",".join(f'"{f}"' for f in IRIS_FIELDS) + "\n"
                        + "".join(",".join(map(str, r)) + "\n" for r in IRIS_ROWS))
    expected = _kspec_predict(run, rows_csv)
    records = [dict(zip(IRIS_FIELDS, r)) for r in IRIS_ROWS]
    answer = httpx.post(url + "/predict", json={"records": records}).json()
    _same_table(answer["predictions"], expected)
    assert answer["columns"] == list(expected[0])
    # TF Serving's row and column forms give the same probabilities
    rows = httpx.post(url + "/v1/models/iris-mlp:predict", json={"instances": IRIS_ROWS}).json()
    cols = httpx.post(url + "/v1/models/iris-mlp:predict", json={"inputs": {"measurements": IRIS_ROWS}}).json()
    probs = np.array([[float(e[f"p_{c}"]) for c in ("setosa", "versicolor", "virginica")] for e in expected])
    np.testing.assert_allclose(np.array(rows["predictions"]), probs, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.array(cols["outputs"]), probs, rtol=2e-5, atol=2e-6)
    versioned = httpx.post(url + "/v1/models/iris-mlp/versions/1:predict", json={"inputs": IRIS_ROWS}).json()
    assert versioned == cols


@slow
def test_image_bytes_predictions_equal_kspec_predict(served, tmp_path):
    from PIL import Image

    url, run = served["urls"]["images"], served["runs"]["images"]
    folder = tmp_path / "new"
    folder.mkdir()
    rng = np.random.default_rng(1)
    files = []
    for k, (size, fmt) in enumerate((((20, 14), "PNG"), ((9, 11), "JPEG"), ((8, 8), "PNG"))):
        path = folder / f"{k}.{'jpg' if fmt == 'JPEG' else 'png'}"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, fmt)
        files.append(path)
    expected = _kspec_predict(run, folder)
    b64 = [base64.b64encode(f.read_bytes()).decode() for f in files]
    answer = httpx.post(url + "/predict", json={"records": [{"img": {"b64": b}} for b in b64]}).json()
    _same_table(answer["predictions"], expected)
    rows = httpx.post(url + "/v1/models/shades:predict", json={"instances": [{"b64": b} for b in b64]}).json()
    probs = [[float(e["p_dark"]), float(e["p_light"])] for e in expected]
    np.testing.assert_allclose(np.array(rows["predictions"]), probs, rtol=2e-5, atol=2e-6)


@slow
def test_multi_input_predictions_equal_kspec_predict(served, tmp_path):
    url, run = served["urls"]["multi"], served["runs"]["multi"]
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 3)).astype(np.float32), rng.normal(size=(3, 2, 2)).astype(np.float32)
    np.savez(tmp_path / "new.npz", a=a, b=b)
    expected = _kspec_predict(run, tmp_path / "new.npz")
    records = [{"a": a[i].tolist(), "b": b[i].tolist()} for i in range(3)]
    answer = httpx.post(url + "/predict", json=records).json()
    _same_table(answer["predictions"], expected)
    assert answer["columns"][0] == "kind.class" and "size" in answer["columns"]
    rows = httpx.post(url + "/v1/models/two-in:predict", json={"instances": records}).json()["predictions"]
    cols = httpx.post(url + "/v1/models/two-in:predict",
                      json={"inputs": {"a": a.tolist(), "b": b.reshape(3, 4).tolist()}}).json()["outputs"]
    assert set(rows[0]) == {"kind", "size"} and set(cols) == {"kind", "size"}
    for i, e in enumerate(expected):
        assert rows[i]["size"][0] == pytest.approx(float(e["size"]), rel=2e-5, abs=2e-6)
        assert cols["size"][i][0] == pytest.approx(float(e["size"]), rel=2e-5, abs=2e-6)
        assert rows[i]["kind"] == pytest.approx(cols["kind"][i], rel=1e-6)


# -- metadata, status, readiness -------------------------------------------------------------------

@slow
def test_metadata_status_and_readiness(served):
    url, run = served["urls"]["iris"], served["runs"]["iris"]
    for name, (ready, predict) in served["first"].items():
        assert (ready, predict) == (503, 503), name          # answered while loading, not before
    assert httpx.get(url + "/healthz").json() == {"status": "alive"}
    status = httpx.get(url + "/v1/models/iris-mlp").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    meta = httpx.get(url + "/v1/models/iris-mlp/metadata").json()
    assert meta["model_spec"] == {"name": "iris-mlp", "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["measurements"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["measurements"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert [d["size"] for d in sig["outputs"]["species"]["tensor_shape"]["dim"]] == ["-1", "3"]
    k = meta["kspec"]
    assert k["outputs"] == [{"name": "species", "task": "classification",
                             "classes": ["setosa", "versicolor", "virginica"]}]
    assert k["metrics"] == json.loads((run / "metrics.json").read_text())
    import hashlib

    assert k["spec_hash"] == "sha256:" + hashlib.sha256((run / "spec.yaml").read_bytes()).hexdigest()
    assert set(k["versions"]) == {"kspec", "tensorflow", "keras"}
    assert [f["name"] for f in k["fields"]] == IRIS_FIELDS
    assert httpx.get(url + "/curves.png").content == (run / "curves.png").read_bytes()
    missing = httpx.get(url + "/v1/models/nope/metadata")
    assert missing.status_code == 404 and "iris-mlp" in missing.json()["error"]


# -- bad requests: 400 with kspec's message, and the server keeps answering --------------------------

BAD = [
    # (path, body bytes or JSON, status, words the message must hold)
    (":predict", b"{not json", 400, ["malformed JSON", "line 1"]),
    (":predict", b"", 400, ["empty"]),
    (":predict", b'{"instances": [[1, 2, NaN, 4]]}', 400, ["NaN"]),
    (":predict", [[1, 2, 3, 4]], 400, ["JSON object", "instances"]),
    (":predict", {"instances": [[1, 2, 3]]}, 400, ["instances[0]", "shape [3]", "'measurements'", "[4]"]),
    (":predict", {"instances": [[1, 2], [3, 4, 5, 6]]}, 400, ["instances[0]", "shape [2]"]),
    (":predict", {"instances": [[1, "two", 3, 4]]}, 400, ["instances[0][1]", "string", "number"]),
    (":predict", {"instances": [[[1, 2], [3]]]}, 400, ["instances[0]", "rectangular"]),
    (":predict", {"instances": []}, 400, ["empty"]),
    (":predict", {"instances": [{"measurments": [1, 2, 3, 4]}]}, 400,
     ["unknown input 'measurments'", "did you mean 'measurements'"]),
    (":predict", {"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}, 400, ["exactly one"]),
    (":predict", {"instancez": [[1, 2, 3, 4]]}, 400, ["unknown field 'instancez'"]),
    (":predict", {"inputs": {"measurements": [[1, 2, 3, 4]], "extra": [[1]]}}, 400, ["unknown input 'extra'"]),
    (":predict", {"instances": [{"b64": "AAAA"}]}, 400, ["not an image"]),
    ("/predict", {"records": [{"sepal length (cm)": 1, "sepal width (cm)": 2, "petal length (cm)": 3}]}, 400,
     ["records[0] lacks field 'petal width (cm)'"]),
    ("/predict", {"records": [dict(zip(IRIS_FIELDS, [1, 2, "3", 4]))]}, 400,
     ["records[0].petal length (cm)", "string", "number"]),
    ("/predict", {"records": [dict(zip(IRIS_FIELDS, [1, 2, 3, 4]), colour=1)]}, 400, ["unknown field 'colour'"]),
    ("/predict", {"rows": []}, 400, ["unknown field 'rows'"]),
    ("/predict", {"records": "abc"}, 400, ["records must be a list"]),
]


@slow
def test_bad_requests_get_400_with_kspecs_message_and_the_server_keeps_answering(served):
    url = served["urls"]["iris"]
    good = {"instances": IRIS_ROWS[:1]}
    for path, body, status, words in BAD:
        target = url + ("/v1/models/iris-mlp" + path if path.startswith(":") else path)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(target, content=data, headers={"content-type": "application/json"})
        assert r.status_code == status, (body, r.text)
        message = r.json()["error"]
        assert "Traceback" not in message
        for word in words:
            assert word in message, (body, message)
        assert httpx.post(url + "/v1/models/iris-mlp:predict", json=good).status_code == 200
    assert httpx.get(url + "/v1/models/iris-mlp:predict").status_code == 405
    assert httpx.get(url + "/nowhere").status_code == 404


@slow
def test_bad_images_oversize_bodies_and_busy_queue(served, tmp_path):
    from PIL import Image

    url = served["urls"]["images"]
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "PNG")
    png = buffer.getvalue()
    cases = [
        (base64.b64encode(b"GIF89a not really").decode(), ["does not decode"]),
        (base64.b64encode(png[: len(png) // 2]).decode(), ["does not decode"]),
        ("@@not base64@@", ["not valid base64"]),
    ]
    for b64, words in cases:
        r = httpx.post(url + "/predict", json={"records": [{"img": {"b64": b64}}]})
        assert r.status_code == 400 and all(w in r.json()["error"] for w in words), r.text
    bomb = io.BytesIO()
    Image.new("L", (6000, 6000)).save(bomb, "PNG")             # a small file that claims 36 million pixels
    r = httpx.post(url + "/predict", json={"records": [{"img": {"b64": base64.b64encode(bomb.getvalue()).decode()}}]})
    assert r.status_code == 400 and "6000x6000" in r.json()["error"] and "--max-image-pixels" in r.json()["error"]
    r = httpx.post(url + "/predict", json={"records": [{"img": [[[0.5] * 3] * 8] * 7}]})
    assert r.status_code == 400 and "shape [7, 8, 3]" in r.json()["error"]
    ok = httpx.post(url + "/predict", json={"records": [{"img": {"b64": base64.b64encode(png).decode()}}]})
    assert ok.status_code == 200

    # the slow-queue server: --max-body-bytes 2000, --max-queue 1, batches wait 1.5 s for company
    slowq = served["slowq"]
    surl = slowq.ready()
    big = httpx.post(surl + "/v1/models/slow:predict", json={"instances": [[1.0, 2.0, 3.0, 4.0]] * 200})
    assert big.status_code == 413 and "--max-body-bytes" in big.json()["error"]
    results = {}

    def first():
        results["first"] = httpx.post(surl + "/v1/models/slow:predict", json={"instances": IRIS_ROWS[:1]}, timeout=30)

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.5)                                                  # the first request waits in the queue
    busy = httpx.post(surl + "/v1/models/slow:predict", json={"instances": IRIS_ROWS[:1]}, timeout=30)
    t.join()
    assert busy.status_code == 503 and "busy" in busy.json()["error"] and busy.headers["retry-after"] == "1"
    assert results["first"].status_code == 200


# -- micro-batching under concurrent clients ---------------------------------------------------------

@slow
def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(served):
    url = served["urls"]["iris"]
    rng = np.random.default_rng(3)
    rows = (rng.normal(size=(128, 4)) + [5.8, 3.0, 3.7, 1.2]).round(3).tolist()
    alone = httpx.post(url + "/v1/models/iris-mlp:predict", json={"instances": rows}).json()["predictions"]
    before = httpx.get(url + "/readyz").json()

    def one(i):
        with httpx.Client() as client:
            return client.post(url + "/v1/models/iris-mlp:predict", json={"instances": [rows[i]]}, timeout=30)

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(len(rows))))
    assert all(a.status_code == 200 for a in answers)
    for i, a in enumerate(answers):
        np.testing.assert_allclose(a.json()["predictions"][0], alone[i], rtol=1e-5, atol=1e-6)
    after = httpx.get(url + "/readyz").json()
    batches, examples = after["batches"] - before["batches"], after["examples"] - before["examples"]
    assert examples == len(rows) and batches < len(rows)             # several requests shared a model call
    assert after["traces"] == 1                                      # one trace for every batch size


# -- graceful shutdown, safe loading -----------------------------------------------------------------

@slow
def test_sigterm_finishes_requests_in_flight_then_exits_and_run_plugins_are_not_imported(served):
    slowq = served["stopper"]           # its first request waits 1.5 s for company (no batch seen yet)
    surl = slowq.ready()
    assert not (served["root"] / "imported").exists()              # spec.yaml's `plugins:` was never imported
    results = {}

    def request():
        results["r"] = httpx.post(surl + "/v1/models/slow:predict", json={"instances": IRIS_ROWS[:2]}, timeout=30)

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.5)                                                  # in the queue: 1 s to go before it runs
    slowq.proc.send_signal(signal.SIGTERM)
    t.join()
    assert results["r"].status_code == 200 and len(results["r"].json()["predictions"]) == 2
    assert slowq.proc.wait(30) == 0
    assert "stopped" in "".join(slowq.lines)


def test_serve_refuses_a_missing_run_and_a_port_in_use(tmp_path, kspec):
    result = kspec("serve", tmp_path / "nothing")
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "spec.yaml").write_text("kspec: 1\n")
    result = kspec("serve", tmp_path / "half")
    assert result.returncode == 2 and "model.keras" in result.stderr


@slow
def test_port_in_use_is_a_kspec_error(served):
    port = served["urls"]["iris"].rsplit(":", 1)[1]
    result = subprocess.run(kspec_cmd("serve", served["runs"]["iris"], "--port", port), env=env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


# -- the page, in a real headless Chromium ---------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_page_in_headless_chromium(served, tmp_path):
    from browser import Browser

    url = served["urls"]["iris"]
    expected = httpx.post(url + "/predict", json={"records": [dict(zip(IRIS_FIELDS, IRIS_ROWS[1]))]}).json()
    with Browser(CHROMIUM, tmp_path / "profile") as page:
        page.open(url + "/")
        page.wait("document.getElementById('try').dataset.ready === '1'")
        assert page.eval("document.querySelectorAll('#fields input[type=number]').length") == 4
        assert "test" in page.eval("document.getElementById('metrics').innerText")
        assert page.eval("document.getElementById('curves').naturalWidth") > 0          # the PNG loaded
        for name, value in zip(IRIS_FIELDS, IRIS_ROWS[1]):
            page.eval(f"document.querySelector(\"[data-field='{name}']\").value = '{value}'")
        page.eval("document.getElementById('submit').click()")
        page.wait("document.getElementById('result').dataset.done === '1'")
        label = page.eval("document.getElementById('label').textContent")
        assert label == expected["predictions"][0]["class"]
        shown = page.eval("document.getElementById('values').innerText")
        assert f"p_{label}" in shown and f"{expected['predictions'][0]['p_' + label]:.4f}" in shown

    from PIL import Image

    img = tmp_path / "pick.png"
    Image.fromarray(np.full((10, 12, 3), 220, np.uint8)).save(img)
    iurl = served["urls"]["images"]
    want = httpx.post(iurl + "/predict", json={"records": [{"img": {"b64": base64.b64encode(
        img.read_bytes()).decode()}}]}).json()["predictions"][0]["class"]
    with Browser(CHROMIUM, tmp_path / "profile2") as page:
        page.open(iurl + "/")
        page.wait("document.getElementById('try').dataset.ready === '1'")
        page.set_file("#fields input[type=file]", img)
        page.eval("document.getElementById('submit').click()")
        page.wait("document.getElementById('result').dataset.done === '1'")
        assert page.eval("document.getElementById('label').textContent") == want


# -- the request codec, in-process (fast) ------------------------------------------------------------

def test_records_encode_categorical_columns_as_training_did():
    from compiler.serve.codec import Decoder, RequestError
    from compiler.serve.model import InputInfo

    decoder = Decoder([InputInfo("x", (4,), "float32", ("age", "colour=blue", "colour=red", "size"))])
    assert [f["name"] for f in decoder.fields()] == ["age", "colour", "size"]
    assert decoder.fields()[1] == {"name": "colour", "input": "x", "kind": "category", "categories": ["blue", "red"]}
    x = decoder.records([{"age": 3, "colour": "red", "size": 1.5}, {"age": 4, "colour": "blue", "size": 0}])["x"]
    np.testing.assert_array_equal(x, [[3, 0, 1, 1.5], [4, 1, 0, 0]])
    assert x.dtype == np.float32
    for record, words in (({"age": 3, "colour": "green", "size": 1}, ["'green'", "known: blue, red"]),
                          ({"age": 3, "colour": 1, "size": 1}, ["records[0].colour", "string"]),
                          ({"age": True, "colour": "red", "size": 1}, ["records[0].age", "boolean"]),
                          ({"age": 3, "colour": "red"}, ["lacks field 'size'"])):
        with pytest.raises(RequestError) as caught:
            decoder.records([record])
        assert caught.value.status == 400 and all(w in caught.value.message for w in words), caught.value.message


def test_tf_serving_forms_shapes_and_limits():
    from compiler.serve.codec import Decoder, Limits, RequestError, parse_json
    from compiler.serve.model import InputInfo

    decoder = Decoder([InputInfo("ids", (None,), "int32"), InputInfo("img", (2, 2, 1), "float32")],
                      Limits(max_examples=3))
    got = decoder.tf_serving({"instances": [{"ids": [1, 2], "img": [1, 2, 3, 4]}]})[0]
    assert got["ids"].dtype == np.int32 and got["img"].shape == (1, 2, 2, 1)    # a flat list is reshaped
    cols = decoder.tf_serving({"inputs": {"ids": [[1], [2]], "img": [[[[0]] * 2] * 2] * 2}})
    assert cols[1] == "inputs" and cols[0]["img"].shape == (2, 2, 2, 1)
    bad = [({"instances": [{"ids": [1.5], "img": [0] * 4}]}, 400, "whole numbers"),
           ({"inputs": {"ids": [[1], [2]], "img": [[0] * 4]}}, 400, "different numbers of examples"),
           ({"instances": [{"ids": [1], "img": [0] * 4}] * 4}, 413, "limit of 3"),
           ({"instances": [{"ids": [1], "img": [0] * 4}, {"ids": [1, 2], "img": [0] * 4}]}, 400, "different shapes"),
           ({"instances": [[1, 2]]}, 400, "object of the model's inputs")]
    for body, status, words in bad:
        with pytest.raises(RequestError) as caught:
            decoder.tf_serving(body)
        assert caught.value.status == status and words in caught.value.message, caught.value.message
    with pytest.raises(RequestError, match="Infinity"):
        parse_json(b'{"instances": [Infinity]}')
    with pytest.raises(RequestError, match="nested too deeply"):
        parse_json(b"[" * 100000 + b"]" * 100000)


def test_a_run_needing_its_plugins_says_to_pass_them_with_plugin(tmp_path):
    from compiler.errors import SpecError
    from compiler.serve.model import read_run

    text = (Path(__file__).parents[1] / "examples" / "iris_mlp.yaml").read_text()
    text = text.replace("\nseed:", "\nplugins: [my_layers]\nseed:", 1)
    text = text.replace("Dense: {units: 16", "MyDense: {units: 16", 1)
    (tmp_path / "spec.yaml").write_text(text)
    (tmp_path / "model.keras").write_bytes(b"")
    with pytest.raises(SpecError) as caught:
        read_run(str(tmp_path))
    assert "MyDense" in str(caught.value) and "never imports" in str(caught.value) and "--plugin" in str(caught.value)
