#!/usr/bin/env python
"""Write docs/errors.md: the errors kspec reports, by stage, each with real output and what to do.

    .venv/bin/python scripts/list_errors.py                 writes docs/errors.md (about a minute)
    .venv/bin/python scripts/list_errors.py -o -            prints it instead
    .venv/bin/python scripts/list_errors.py --inventory     only the list of every error site in compiler/

Two parts:
1. Examples: each case below is a broken spec, data file or command line (the 33 specs of
   tests/broken/ included). The script runs the real command (`compiler.cli.main`, the function
   behind the `kspec` console script) in a scratch folder, in this one process so TensorFlow is
   imported once, and copies its stderr and exit status into the page verbatim, next to a
   hand-written "what to do". Paths under the scratch folder are shown relative to it.
2. Inventory: every place in compiler/ that raises a user-facing error (SpecError, DataError,
   TrainingError, RunDirError, WriteError, ExportError, KspecError, a Diagnostic, a collector's
   `add`...), found by reading the source, with its message as written there, grouped by stage.
   A new error shows up here without anyone editing this script.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# -- the cases -------------------------------------------------------------------------------

IRIS = """\
kspec: 1
name: iris
seed: 0
data:
  source: {sklearn: iris}
  split: {validation: 0.2, test: 0.2}
  preprocess: [standardize]
model:
  inputs:
    x: {shape: [4]}
  layers:
    - Dense: {units: 8, activation: relu}
    - Dense: {units: 3, activation: softmax}
      name: species
  outputs: [species]
train:
  optimizer: {Adam: {learning_rate: 0.01}}
  loss: sparse_categorical_crossentropy
  metrics: [accuracy]
  epochs: 2
"""

CSV_SPEC = IRIS.replace("{sklearn: iris}", "{csv: %s, target: species}").replace("  preprocess: [standardize]\n", "")


def csv_rows(bad: dict[tuple[int, int], str] | None = None, labels: dict[str, str] | None = None) -> str:
    """An iris-like CSV; `bad` replaces cells by (line, column) (line 2 is the first data row)."""
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    names = ["setosa", "versicolor", "virginica"]
    for i in range(30):
        c = i % 3
        row = [f"{5 + c + (i % 7) / 10:.1f}", f"{3 + (i % 5) / 10:.1f}", f"{1 + 2 * c + (i % 3) / 10:.1f}",
               f"{0.2 + 0.8 * c:.1f}", (labels or {}).get(names[c], names[c])]
        for (line, col), value in (bad or {}).items():
            if line == i + 2:
                row[col] = value
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    stage: str
    title: str
    argv: list[str]                       # "{dir}" is the scratch folder of the case
    todo: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: str | None = None              # the name of a function below run first (a trained run...)
    file_limit: int | None = None         # RLIMIT_FSIZE: writes past it fail as on a full disk


BROKEN = {   # tests/broken/<name>.yaml -> (stage, title, what to do)
    "bad_yaml": ("load", "Invalid YAML",
        "Fix the YAML syntax at that line and column (here a flow mapping `{...}` misses a comma or its "
        "closing brace)."),
    "duplicate_key": ("load", "A key given twice",
        "A key may appear once per mapping; merge the two entries or rename one."),
    "custom_tag": ("load", "A YAML tag",
        "Remove the `!tag`: a spec is plain data. Layers are written as `ClassName: {args}`."),
    "python_tag": ("load", "A YAML tag that would run Python",
        "Remove the tag. kspec never builds Python objects from YAML; nothing was run."),
    "alias_bomb": ("load", "An alias bomb",
        "The YAML anchors/aliases expand to too many values (a 'billion laughs' document). Write the values "
        "out, or use blocks and `repeat` instead of aliases."),
    "deep_nesting": ("load", "Absurdly deep nesting",
        "Flatten the structure; no spec needs more than a few levels of nesting."),
    "missing_version": ("resolve", "No format version",
        "Add `kspec: 1` as the first line: the version of the spec format."),
    "unknown_version": ("resolve", "An unknown format version",
        "Write `kspec: 1`, or upgrade kspec if the spec comes from a newer one."),
    "extends_missing": ("resolve", "`extends` names a missing file",
        "Fix the path in `extends`: it is relative to the file that names it."),
    "extends_cycle_a": ("resolve", "Two files that extend each other",
        "Two files extend each other; remove one of the `extends`."),
    "block_self_use": ("resolve", "A block that uses itself",
        "A block cannot contain itself (directly or through other blocks); use `repeat` to stack it."),
    "unknown_block_param": ("resolve", "An argument a block does not take",
        "Use one of the parameters the block declares in its `params`, or add the parameter there."),
    "unknown_param": ("resolve", "An unknown `$param` inside a block",
        "Inside a block, `$name` must be one of the block's `params` (or a repeat index named with `as:`); "
        "fix the spelling."),
    "expression_attribute": ("resolve", "An attribute in an expression",
        "`${...}` takes arithmetic on numbers and parameters only (+ - * / // % ** and parentheses): no "
        "attributes, calls or names."),
    "expression_injection": ("resolve", "A call in an expression",
        "Same rule: an expression cannot call anything. Nothing was run."),
    "expression_huge_power": ("resolve", "A huge power in an expression",
        "Use a smaller exponent; powers are limited so a spec cannot ask for astronomically large numbers."),
    "typo_layer_class": ("resolve", "A misspelt layer class",
        "Use the exact Keras class name (case matters) or the name of a block."),
    "lambda_layer": ("resolve", "A Lambda layer",
        "Lambda layers would run code from the spec; register a plugin module of your own layers with "
        "`--plugin MODULE` and use its class instead."),
    "duplicate_name": ("resolve", "Two nodes with the same name",
        "Node names are unique per model (per use, inside a block); rename one."),
    "unknown_top_key": ("validate", "An unknown top-level key",
        "Fix the key; the top level holds kspec, name, extends, seed, data, model, train."),
    "missing_layers": ("validate", "A required key missing",
        "Add the missing key (here `model.layers`, the list of layers)."),
    "typo_argument": ("validate", "A misspelt layer argument",
        "Use an argument of that Keras class (`kspec schema --component layers` lists them; editors complete "
        "them from the schema)."),
    "wrong_type_units": ("validate", "A value of the wrong type",
        "Give a value of the type the argument takes (here a whole number)."),
    "wrong_kernel_size": ("validate", "A wrong item in a list argument",
        "Same: every item of `kernel_size` is a whole number."),
    "dropout_type": ("validate", "Several wrong values",
        "Both errors of the file are reported at once; fix each value's type."),
    "bad_initializer": ("validate", "An unknown initializer",
        "Use a Keras initializer name (`he_normal`) or class with arguments (`{HeNormal: {seed: 1}}`)."),
    "unknown_optimizer": ("validate", "An unknown optimizer",
        "Use a Keras optimizer name or class: adam, sgd, rmsprop, `{Adam: {learning_rate: 0.001}}`..."),
    "dangling_input": ("validate", "`inputs` naming no node",
        "`inputs:` names nodes (by `name:`) or model inputs; fix the name."),
    "dangling_output": ("validate", "`outputs` naming no node",
        "`outputs:` names nodes; fix the name (or give the node that `name:`)."),
    "dangling_share": ("validate", "`share` naming no node",
        "`share:` names an earlier node whose layer (and weights) to reuse."),
    "cycle": ("validate", "A cycle in the graph",
        "The `inputs:` references form a loop; a model is a graph without cycles."),
    "loss_unknown_output": ("validate", "A loss for an output that does not exist",
        "In a loss (or metrics, loss_weights) mapping, each key is a model output name."),
}

CASES: list[Case] = []


def case(*args, **kw) -> None:
    CASES.append(Case(*args, **kw))


# resolve: command-line overrides
case("resolve", "An override that is not PATH=VALUE", ["validate", "{dir}/spec.yaml", "--set", "train.epochs"],
     "Write `--set PATH=VALUE`, e.g. `--set train.epochs=5` (the value is read as YAML).",
     files={"spec.yaml": IRIS})
case("resolve", "An override through a value that is not a mapping",
     ["validate", "{dir}/spec.yaml", "--set", "train.epochs.max=5"],
     "The path goes through `train.epochs`, which is a number; check the dotted path.", files={"spec.yaml": IRIS})
case("validate", "An empty `outputs` list",
     ["validate", "{dir}/spec.yaml"], "Name the output node(s), or leave `outputs` out to use the last layer.",
     files={"spec.yaml": IRIS.replace("outputs: [species]", "outputs: []")})
case("validate", "`$input` where a number belongs",
     ["validate", "{dir}/spec.yaml"], "`$input` names the node a block is applied to and belongs in `inputs:` "
     "lists inside a block; give a number here.",
     files={"spec.yaml": IRIS.replace("units: 8,", "units: $input,")})

# build
CNN = """\
kspec: 1
model:
  inputs:
    img: {shape: [8, 8, 1]}
  layers:
    - Flatten: {}
    - Conv2D: {filters: 8, kernel_size: 3}
      name: conv
    - Dense: {units: 10, activation: softmax}
"""
case("build", "A layer that cannot take the shape it is given", ["build", "{dir}/spec.yaml"],
     "Reorder the layers or add the layer the hint names (here: Conv2D needs an image, so it goes before "
     "the Flatten).", files={"spec.yaml": CNN})
case("build", "Inputs of a merge layer with different shapes", ["build", "{dir}/spec.yaml"],
     "Make the merged tensors the same shape (e.g. give both Dense layers the same units), or use Concatenate.",
     files={"spec.yaml": """\
kspec: 1
model:
  inputs: {x: {shape: [4]}}
  layers:
    - Dense: {units: 8}
      name: a
    - Dense: {units: 6}
      name: b
      inputs: [x]
    - Add: {}
      name: sum
      inputs: [a, b]
"""})
case("build", "A merge layer with one input", ["build", "{dir}/spec.yaml"],
     "List the nodes to combine under `inputs:`.", files={"spec.yaml": """\
kspec: 1
model:
  inputs: {x: {shape: [4]}}
  layers:
    - Dense: {units: 4}
    - Add: {}
"""})
case("build", "Several inputs for a layer that takes one", ["build", "{dir}/spec.yaml"],
     "Give the layer one input, or merge the inputs first with Concatenate or Add.", files={"spec.yaml": """\
kspec: 1
model:
  inputs: {x: {shape: [4]}}
  layers:
    - Dense: {units: 4}
      name: a
    - Dense: {units: 2}
      inputs: [x, a]
"""})
case("build", "An argument value out of range", ["build", "{dir}/spec.yaml"],
     "Use a value in the range the argument takes (a dropout rate is in [0, 1)); the schema knows the "
     "ranges, so `kspec validate` reports this too.", files={"spec.yaml": """\
kspec: 1
model:
  inputs: {x: {shape: [4]}}
  layers:
    - Dropout: {rate: 1.5}
    - Dense: {units: 2}
"""})
case("build", "Arguments Keras refuses when it creates the layer", ["build", "{dir}/spec.yaml"],
     "Follow Keras's explanation (here: a 2-D convolution takes a kernel size of 2 numbers).",
     files={"spec.yaml": """\
kspec: 1
model:
  inputs: {img: {shape: [8, 8, 1]}}
  layers:
    - Conv2D: {filters: 4, kernel_size: [3, 3, 3]}
"""})
case("build", "A Reshape to a different number of values", ["build", "{dir}/spec.yaml"],
     "The target shape must hold as many values as the input (here 4, e.g. `[2, 2]`); `-1` stands for "
     "whatever is left.", files={"spec.yaml": """\
kspec: 1
model:
  inputs: {x: {shape: [4]}}
  layers:
    - Reshape: {target_shape: [3, 3]}
"""})
case("build", "An unknown dimension where weights need a size", ["build", "{dir}/spec.yaml"],
     "Give the input's last dimension a size; only dimensions no weight depends on may be null.",
     files={"spec.yaml": "kspec: 1\nmodel:\n  inputs: {x: {shape: [null]}}\n  layers:\n    - Dense: {units: 2}\n"})
case("build", "A Backbone from a file that does not exist", ["build", "{dir}/spec.yaml"],
     "Fix the path (relative to the spec), or use `application: NAME` for a Keras application.",
     files={"spec.yaml": """\
kspec: 1
model:
  inputs: {img: {shape: [32, 32, 3]}}
  layers:
    - Backbone: {from: missing.keras}
    - Dense: {units: 2, activation: softmax}
"""})

# data
for name, bad, text, todo in [
    ("nan.csv", {(8, 2): "nan"}, "A missing value in a CSV",
     "Fill the cell or drop the row; kspec never drops or fills rows behind your back."),
    ("text.csv", {(10, 1): "abc"}, "Text in a numeric column", "Fix the cell (a column is categorical only "
     "when most of its cells are text)."),
    ("short.csv", {(5, 4): "setosa,extra"}, "A row with more fields than the header",
     "Each line needs one value per header column; quote values that contain the delimiter."),
]:
    case("data", text, ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"], todo,
         files={name: csv_rows(bad), "spec.yaml": CSV_SPEC % name})
case("data", "A target column that does not exist", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Name an existing column in `target:` (the columns are listed).",
     files={"iris.csv": csv_rows(), "spec.yaml": (CSV_SPEC % "iris.csv").replace("target: species", "target: specis")})
case("data", "Class labels beyond the output layer", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Give the output layer as many units as there are classes (labels are 0..units-1), or fix the labels.",
     files={"labels.csv": csv_rows(labels={"setosa": "0", "versicolor": "1", "virginica": "5"}),
            "spec.yaml": CSV_SPEC % "labels.csv"})
case("data", "More classes than output units", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Give the output layer one unit per class.",
     files={"iris.csv": csv_rows(), "spec.yaml": (CSV_SPEC % "iris.csv").replace("units: 3,", "units: 2,")})
case("data", "An unknown parameter of a data source", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Fix the parameter's name; each source lists the parameters it takes.",
     files={"iris.csv": csv_rows(), "spec.yaml": (CSV_SPEC % "iris.csv").replace("target: species",
                                                                                "target: species, delimeter: ';'")})
case("data", "Data that does not fit the declared input shape", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Declare the shape the data has, or reshape the data with `data.reshape` when the sizes agree.",
     files={"spec.yaml": IRIS.replace("shape: [4]", "shape: [2, 2, 1]")})
case("data", "An npz archive without the array the model needs",
     ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Name the arrays to use under the source: `{npz: FILE, x: KEY, y: KEY}`, or save them as x and y.",
     files={"spec.yaml": IRIS.replace("{sklearn: iris}", "{npz: arrays.npz}")}, setup="npz_without_x")
case("data", "An image that cannot be read", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Replace or remove the file; every file with an image extension in a class folder is read.",
     files={"spec.yaml": """\
kspec: 1
data:
  source: {images: pictures}
model:
  inputs: {img: {shape: [8, 8, 3]}}
  layers:
    - Flatten: {}
    - Dense: {units: 2, activation: softmax}
train: {loss: sparse_categorical_crossentropy, epochs: 1}
"""}, setup="image_folder")
case("data", "A split that leaves nothing to train on", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Lower `validation` and `test`: they are fractions of the whole data set.",
     files={"spec.yaml": IRIS.replace("{validation: 0.2, test: 0.2}", "{validation: 0.5, test: 0.5}")})

# train
case("train", "The loss becomes NaN", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run", "--verbose", "0"],
     "Lower the learning rate, clip gradients (`clipnorm: 5.0`) or standardize the inputs (and targets). "
     "The run directory keeps the last good checkpoint.", files={"spec.yaml": """\
kspec: 1
seed: 0
data:
  source: {sklearn: diabetes}     # targets in the hundreds, not standardized
  split: {validation: 0.2}
model:
  inputs: {x: {shape: [10]}}
  layers:
    - Dense: {units: 8, activation: relu}
    - Dense: {units: 1}
train:
  optimizer: {SGD: {learning_rate: 1000000.0}}
  loss: mse
  epochs: 3
"""})
case("train", "A monitor that is not a logged metric",
     ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run", "--verbose", "0"],
     "Use one of the logged names listed (`val_loss`, `val_accuracy`...).",
     files={"spec.yaml": IRIS.replace("  epochs: 2\n", "  epochs: 2\n  monitor: val_acc\n")})
case("train", "A callback argument out of range", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Use arguments the callback accepts (ReduceLROnPlateau's factor is below 1).",
     files={"spec.yaml": IRIS + "  callbacks: [{ReduceLROnPlateau: {factor: 2.0}}]\n"})
case("train", "A class weight for a class that does not exist", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Name classes 0..units-1, or use `class_weight: balanced`.",
     files={"spec.yaml": IRIS + "  class_weight: {0: 1.0, 5: 2.0}\n"})
case("train", "A run directory that already holds a run", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/done"],
     "Pass `--resume` to continue that run, or choose another `--run-dir`; nothing in it was changed.",
     files={"spec.yaml": IRIS}, setup="trained_run")
case("train", "Resuming with a different model", ["train", "{dir}/other.yaml", "--run-dir", "{dir}/done", "--resume"],
     "Resume with the run's own spec (its spec.yaml); the train section may change, not the model or data.",
     files={"spec.yaml": IRIS, "other.yaml": IRIS.replace("units: 8,", "units: 16,")}, setup="trained_run")
case("train", "Resuming a run directory that does not exist",
     ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/nowhere", "--resume"],
     "Check the path, or drop `--resume` to start a new run there.", files={"spec.yaml": IRIS})
case("train", "A run directory below a file", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/notes.txt/run"],
     "Choose a `--run-dir` whose parents are folders.", files={"spec.yaml": IRIS, "notes.txt": "mine\n"})
case("train", "A full disk (or a file-size limit)", ["train", "{dir}/spec.yaml", "--run-dir", "{dir}/run"],
     "Free some space. A run that had written a checkpoint continues with `--resume` (the hint then says "
     "so); here nothing had been trained, so the run directory was removed and the same command can be "
     "run again.", files={"spec.yaml": IRIS.replace("units: 8,", "units: 2048,")}, file_limit=40_000)

# evaluate / predict / export
case("evaluate / predict / export", "Not a run directory", ["evaluate", "{dir}/empty"],
     "Give the folder `kspec train` wrote (it holds model.keras, spec.yaml, metrics.json).",
     setup="empty_folder")
case("evaluate / predict / export", "Inputs missing a column the model was trained on",
     ["predict", "{dir}/done", "{dir}/flowers.csv"],
     "Give the same feature columns the training data had (their names are in the run's data.json).",
     files={"spec.yaml": IRIS, "flowers.csv": "sepal length (cm),sepal width (cm),petal length (cm)\n5.1,3.5,1.4\n"},
     setup="trained_run")
case("evaluate / predict / export", "An export destination of the wrong kind",
     ["export", "{dir}/done", "--format", "saved_model", "-o", "{dir}/spec.yaml"],
     "A SavedModel is a folder: give a new folder name.", files={"spec.yaml": IRIS}, setup="trained_run")
case("commands", "An unknown template", ["init", "mine", "--from", "mlp_clasifier", "-o", "{dir}/mine.yaml"],
     "Use a template name from `kspec templates`.")
case("commands", "A plugin module that cannot be imported",
     ["build", "{dir}/spec.yaml", "--plugin", "my_layerz"],
     "Make the module importable (on PYTHONPATH or installed) and check its name.", files={"spec.yaml": IRIS})


# -- set-up steps ---------------------------------------------------------------------------------

def trained_run(d: Path) -> None:
    from compiler.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", str(d / "spec.yaml"), "--run-dir", str(d / "done"), "--verbose", "0"]) == 0


def npz_without_x(d: Path) -> None:
    import numpy as np

    np.savez(d / "arrays.npz", features=np.zeros((30, 4), np.float32), labels=np.arange(30) % 3)


def image_folder(d: Path) -> None:
    import numpy as np
    from PIL import Image

    for k, cls in enumerate(["cat", "dog"]):
        (d / "pictures" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i + k, np.uint8)).save(d / "pictures" / cls / f"{i}.png")
    (d / "pictures" / "dog" / "broken.png").write_bytes(b"not a png")


def empty_folder(d: Path) -> None:
    (d / "empty").mkdir()


SETUPS = {f.__name__: f for f in (trained_run, npz_without_x, image_folder, empty_folder)}


# -- running ---------------------------------------------------------------------------------------

def run_case(c: Case, d: Path) -> tuple[int, str]:
    from compiler.cli import main

    for name, text in c.files.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    if c.setup:
        SETUPS[c.setup](d)
    argv = [a.replace("{dir}", str(d)) for a in c.argv]
    err = io.StringIO()
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.getsignal(signal.SIGXFSZ)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            if c.file_limit:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (c.file_limit, limits[1]))
            code = main(argv)
        except SystemExit as exc:               # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)
    return code, err.getvalue()


def shown(text: str, d: Path) -> str:
    text = text.replace(str(d.resolve()) + os.sep, "").replace(str(d) + os.sep, "")
    return text.replace(str(ROOT) + os.sep, "")


def command_line(c: Case) -> str:
    return "kspec " + " ".join(a.replace("{dir}/", "") for a in c.argv)


def examples() -> dict[str, list[tuple[str, str, str, int, str]]]:
    """stage -> [(title, command, output, exit status, what to do)]."""
    from compiler.cli import _quiet_tensorflow, import_tensorflow

    _quiet_tensorflow()
    import_tensorflow()
    warnings.filterwarnings("ignore")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")          # retracing notices from the many tiny runs
    out: dict[str, list] = {}
    os.chdir(ROOT)
    for name, (stage, title, todo) in BROKEN.items():
        path = f"tests/broken/{name}.yaml"
        from compiler.cli import main

        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(["validate", path])
        out.setdefault(stage, []).append((title, f"kspec validate {path}", err.getvalue(), code, todo))
    for c in CASES:
        d = Path(tempfile.mkdtemp(prefix="kspec-errors-"))
        try:
            code, text = run_case(c, d)
        finally:
            os.chdir(ROOT)
            shutil.rmtree(d, ignore_errors=True)
        out.setdefault(c.stage, []).append((c.title, command_line(c), shown(text, d), code, c.todo))
    return out


# -- the inventory ---------------------------------------------------------------------------------

RAISERS = {"SpecError", "DataError", "TrainingError", "KspecError", "RunDirError", "WriteError", "ExportError",
           "Diagnostic", "source_error", "file_error", "cell_error", "node_error", "_label_error", "_error",
           "UnknownComponent"}
STAGES = [("load", ("spec/load.py",)), ("resolve", ("spec/resolve.py", "spec/extends.py", "spec/expand.py",
                                                     "spec/overrides.py", "spec/expr.py")),
          ("validate", ("spec/validate.py", "spec/schema_errors.py", "registry.py")), ("build", ("build/",)),
          ("data", ("data/",)), ("train", ("train/", "distribute/")), ("evaluate / predict / export", ("export/",)),
          ("commands", ("cli.py", "templates.py", "diagnose/", "compare.py"))]


def stage_of(path: str) -> str:
    rel = path.removeprefix("compiler/")
    for stage, prefixes in STAGES:
        if rel.startswith(prefixes):
            return stage
    return "commands"


def inventory() -> dict[str, list[tuple[str, str]]]:
    """stage -> [(message as written in the source, file:line)] for every error raised in compiler/."""
    out: dict[str, list] = {}
    for path in sorted((ROOT / "compiler").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "add" and not (isinstance(func, ast.Attribute) and "error" in ast.unparse(func.value)):
                continue
            if name not in RAISERS and name != "add":
                continue
            # the message: the first text argument that reads as words (not a spec path like "data.source")
            message = next((a for a in node.args if _is_text(a) and " " in _template(a)), None)
            if message is None:
                continue
            out.setdefault(stage_of(rel), []).append((_template(message), f"{rel}:{node.lineno}"))
    for stage in out:
        out[stage].sort(key=lambda m: (m[1].rsplit(":", 1)[0], int(m[1].rsplit(":", 1)[1])))
    return out


def _is_text(node) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_text(node.left) or _is_text(node.right)
    return False


def _template(node) -> str:
    """A message as the user reads it, with each `{expression}` shown as `‹expression›`."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("‹" + _short(ast.unparse(value.value)) + "›")
        return "".join(parts)
    if isinstance(node, ast.BinOp):
        left = _template(node.left) if _is_text(node.left) else "‹" + _short(ast.unparse(node.left)) + "›"
        right = _template(node.right) if _is_text(node.right) else "‹" + _short(ast.unparse(node.right)) + "›"
        return left + right
    return "‹" + _short(ast.unparse(node)) + "›"


def _short(expr: str) -> str:
    expr = re.sub(r"\s+", " ", expr)
    if expr.startswith("did_you_mean("):
        return "; did you mean ...?"
    return expr if len(expr) <= 40 else expr[:37] + "..."


# -- the page --------------------------------------------------------------------------------------

INTRO = """\
# Errors

Every problem kspec finds is reported on stderr as

    FILE:LINE:COL: error: WHAT IS WRONG (at PATH.IN.THE.SPEC)
    FILE:LINE:COL: note: expanded from here        (the block uses or `extends` a value came through)
      hint: WHAT TO DO

all of them at once, never as a Python traceback. The exit status is 2 for a bad spec or bad data,
1 for a failure during training (a NaN loss, a full disk) and 0 for success. `FILE:LINE:COL` is
omitted where there is no place in a file to point at (a command-line argument, a run directory);
data errors point at the data file (`iris.csv:8:11`) when they can.

A message that starts with `kspec: internal error:` is a bug in kspec, not in your spec: please
report it with the output of the same command run with `KSPEC_DEBUG=1`.

This page is generated by `scripts/list_errors.py`: part 1 shows the exact output of real broken
specs and commands (the specs of `tests/broken/` and the cases in the script), part 2 lists every
error message in the source, by stage.

Stages, in the order a spec goes through them:

| stage | what it checks | command that stops there |
|---|---|---|
| load | the YAML itself: syntax, duplicate keys, tags, size | `kspec validate` |
| resolve | `extends`, `--set` overrides, `kspec:` version, blocks, `repeat`, `$param` and `${expr}` | `kspec validate` |
| validate | the JSON Schema (names, arguments, types) and the graph (references, cycles, outputs, losses) | `kspec validate` |
| build | Keras building the model: shapes, argument values Keras refuses, compile | `kspec build`, `kspec train` |
| data | the data files against the model: cells, columns, arrays, shapes, labels | `kspec train` |
| train | the run directory, resuming, callbacks, the training itself, the disk | `kspec train` |
| evaluate / predict / export | run directories, input files, export destinations | `kspec evaluate/predict/export` |
| commands | templates, plugins | `kspec init`, `--plugin` |
"""


def render(ex: dict, inv: dict) -> str:
    out = [INTRO, "\n## Part 1: examples\n"]
    for stage, _ in STAGES:
        if stage not in ex:
            continue
        out.append(f"\n### {stage}\n")
        for title, command, text, code, todo in ex[stage]:
            out.append(f"\n**{title[:1].upper() + title[1:]}.** `{command}` (exit {code})\n")
            out.append("```\n" + (text.strip() or "(no output)") + "\n```\n")
            out.append(f"What to do: {todo}\n")
    out.append("\n## Part 2: every error message, by stage\n")
    out.append("\nAs written in the source; `‹...›` is filled in with the names and values of your spec.\n")
    for stage, _ in STAGES:
        if stage not in inv:
            continue
        out.append(f"\n### {stage}\n\n| message | source |\n|---|---|\n")
        for message, where in inv[stage]:
            text = " ".join(message.split()).replace("|", "\\|")
            out.append(f"| {text} | `{where}` |\n")
    return "".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default=str(ROOT / "docs" / "errors.md"), help="file to write, - for stdout")
    p.add_argument("--inventory", action="store_true", help="print only the inventory of error sites")
    args = p.parse_args()
    inv = inventory()
    if args.inventory:
        for stage, items in inv.items():
            print(f"== {stage}")
            for message, where in items:
                print(f"{where}: {message}")
        return 0
    page = render(examples(), inv)
    if args.output == "-":
        sys.stdout.write(page)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(page)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
