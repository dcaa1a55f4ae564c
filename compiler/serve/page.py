"""The page at `/`: try the model in a browser. Plain HTML and a little JavaScript, no build step.

The form is built from the metadata (`kspec.fields`: one number box per CSV column, a choice
per categorical column, a file picker per image input, a JSON box for any other input) and
posts one record to `/predict`; the answer (label and class probabilities, or the values of
a regressor) is shown below it, with the run's metrics and learning curves.
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kspec serve: __TITLE__</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 56rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
 h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
 label { display: block; margin: .4rem 0; } label span { display: inline-block; min-width: 14rem; }
 input[type=number], select, textarea { width: 16rem; }
 table { border-collapse: collapse; } td, th { padding: .2rem .8rem; border-bottom: 1px solid #ddd; text-align: left; }
 .bar { background: #4a7; height: .8rem; display: inline-block; }
 #error { color: #b00; white-space: pre-wrap; } #label { font-size: 1.3rem; font-weight: bold; }
 img { max-width: 100%; }
</style>
</head>
<body>
<h1>kspec serve: <code>__TITLE__</code></h1>
<p id="status">loading the model...</p>
<form id="try" hidden>
 <div id="fields"></div>
 <button id="submit" type="submit">Predict</button>
</form>
<div id="error"></div>
<div id="result" hidden>
 <h2>Prediction</h2>
 <p id="label"></p>
 <table id="values"><tbody></tbody></table>
</div>
<h2>Metrics of the run</h2>
<table id="metrics"><tbody></tbody></table>
<div id="curves-box" hidden><h2>Learning curves</h2><img id="curves" alt="learning curves" src="curves.png"></div>
<script>
"use strict";
const MODEL = __MODEL__;
const $ = (id) => document.getElementById(id);
let fields = [];

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

async function start() {
  let meta;
  for (;;) {
    const r = await fetch("v1/models/" + encodeURIComponent(MODEL) + "/metadata");
    if (r.status !== 503) { meta = await r.json(); if (!r.ok) { $("status").textContent = meta.error; return; } break; }
    await new Promise((ok) => setTimeout(ok, 500));
  }
  const k = meta.kspec;
  fields = k.fields;
  const box = $("fields");
  for (const f of fields) {
    const label = el("label");
    const what = f.kind === "tensor" ? " (JSON, shape " + JSON.stringify(f.shape) + ")" : "";
    label.appendChild(el("span", {}, f.name + what));
    let input;
    if (f.kind === "number") input = el("input", {type: "number", step: "any", required: ""});
    else if (f.kind === "category") {
      input = el("select");
      for (const c of f.categories) input.appendChild(el("option", {value: c}, c));
    } else if (f.kind === "image") input = el("input", {type: "file", accept: "image/*", required: ""});
    else input = el("textarea", {rows: 3, required: ""});
    input.dataset.field = f.name;
    input.name = f.name;
    label.appendChild(input);
    box.appendChild(label);
  }
  const metrics = $("metrics").tBodies[0];
  for (const [split, values] of Object.entries(k.metrics || {})) {
    if (values && typeof values === "object") {
      for (const [name, v] of Object.entries(values))
        metrics.appendChild(row([split, name, typeof v === "number" ? v.toPrecision(4) : String(v)]));
    } else metrics.appendChild(row([split, "", String(values)]));
  }
  $("curves-box").hidden = !k.has_curves;
  $("status").textContent = "Enter an example and press Predict.";
  $("try").hidden = false;
  $("try").dataset.ready = "1";
}

function row(cells) {
  const tr = el("tr");
  for (const c of cells) tr.appendChild(el("td", {}, c));
  return tr;
}

function readFile(file) {
  return new Promise((ok, fail) => {
    const reader = new FileReader();
    reader.onload = () => ok(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => fail(reader.error);
    reader.readAsDataURL(file);
  });
}

async function record() {
  const out = {};
  for (const f of fields) {
    const input = document.querySelector("[data-field='" + CSS.escape(f.name) + "']");
    if (f.kind === "number") out[f.name] = input.value === "" ? null : Number(input.value);
    else if (f.kind === "category") out[f.name] = input.value;
    else if (f.kind === "image") out[f.name] = {b64: input.files.length ? await readFile(input.files[0]) : ""};
    else {
      try { out[f.name] = JSON.parse(input.value); }
      catch (e) { throw new Error(f.name + ": not JSON: " + e.message); }
    }
  }
  return out;
}

$("try").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").textContent = "";
  $("result").hidden = true;
  try {
    const r = await fetch("predict", {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify({records: [await record()]})});
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || ("HTTP " + r.status));
    show(answer);
  } catch (e) {
    $("error").textContent = e.message;
  }
});

function show(answer) {
  const p = answer.predictions[0];
  const labels = answer.columns.filter((c) => c === "class" || c.endsWith(".class"));
  $("label").textContent = labels.map((c) => p[c]).join(", ");
  const body = $("values").tBodies[0];
  body.replaceChildren();
  for (const c of answer.columns) {
    if (labels.includes(c)) continue;
    const tr = row([c, typeof p[c] === "number" ? p[c].toFixed(4) : String(p[c])]);
    if (/(^|\\.)p_/.test(c)) {
      const td = el("td"); td.appendChild(el("span", {class: "bar", style: "width:" + (p[c] * 10) + "rem"}));
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  $("result").hidden = false;
  $("result").dataset.done = String(Number($("result").dataset.done || 0) + 1);
}

start().catch((e) => { $("status").textContent = "cannot reach the server: " + e.message; });
</script>
</body>
</html>
"""


def page(model_name: str) -> str:
    """The page for the model called `model_name` (escaped for HTML and for the script)."""
    script_name = json.dumps(model_name).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _PAGE.replace("__TITLE__", html.escape(model_name)).replace("__MODEL__", script_name)
