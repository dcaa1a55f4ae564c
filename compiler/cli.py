"""`kspec`: the command line. Parses arguments, runs one stage function, reports errors.

Each command is a small function taking the parsed arguments. Heavy modules
(Keras, TensorFlow) are imported inside the commands that need them, so
`kspec validate`, `resolve`, `schema` and `--help` start instantly.

Exit status: 0 success, 2 bad spec or bad data, 1 failure during training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import KspecError


def _spec_args(p: argparse.ArgumentParser, many: bool = False, trust: bool = False) -> None:
    p.add_argument("spec", nargs="+" if many else None, help="spec file(s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a value, e.g. --set train.epochs=5 (repeatable)")
    _plugin_arg(p)
    if trust:
        _trust_arg(p)


def _plugin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import a Python module of registered Keras layers that the spec may use (repeatable; "
                        "a spec's `plugins:` only declares them: nothing is imported unless named here)")


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", action="append", default=[], metavar="PATH",
                   help="load this model file (or run directory) with Keras safe mode off, so a Lambda, TFSMLayer "
                        "or vocabulary file in it may load: only for files you trust (repeatable)")


def _cache_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where `data.cache: disk` keeps decoded examples (default: $KSPEC_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/kspec/data, else ~/.cache/kspec/data); created if missing")


def _use_cache_dir(args) -> None:
    """`--cache-dir` sets the variable `stream.cache_root` reads, so tune trials and local workers inherit it."""
    if getattr(args, "cache_dir", None):
        from .data.stream import CACHE_DIR_ENV

        os.environ[CACHE_DIR_ENV] = os.path.abspath(os.path.expanduser(args.cache_dir))


def _trust(args) -> None:
    from .trust import trust_files

    trust_files(getattr(args, "trust", None) or ())


def _load_spec(args, path: str | None = None):
    """The `--plugin` modules (once), then the spec at `path` (default `args.spec`) with `--set` applied:
    what every command taking a spec starts with. A bad spec fails here, before TensorFlow loads."""
    from .spec.validate import load_spec

    if not getattr(args, "_plugins_loaded", False):
        _load_plugins(args.plugin)                # plugin layer names must be known to the resolver
        args._plugins_loaded = True
    from .registry import require_declared_plugins

    require_declared_plugins(args.spec if path is None else path)   # `plugins:` declares; only --plugin loads
    return load_spec(args.spec if path is None else path, args.overrides)


def cmd_validate(args) -> int:
    from .errors import SpecError

    failures = []
    for path in args.spec:
        try:
            _load_spec(args, path)
            print(f"{path}: ok")
        except SpecError as exc:
            failures.extend(exc.diagnostics)
    if failures:
        raise SpecError(failures)
    return 0


def cmd_resolve(args) -> int:
    import yaml

    from .spec.tree import plain

    spec = _load_spec(args)
    sys.stdout.write(yaml.safe_dump(plain(spec.tree), sort_keys=False, default_flow_style=None))
    return 0


def cmd_schema(args) -> int:
    from .spec.schemas import SPEC_SCHEMA, read

    if args.component:
        print(json.dumps(read(f"components/{args.component}.schema.json"), indent=1))
    else:
        sys.stdout.write(SPEC_SCHEMA.read_text())
    return 0


def _run_plugins(args) -> None:
    """For commands that read a run directory: import the --plugin modules, and only those (never the
    `plugins:` its spec.yaml declares: that is checked against them, as for any spec). Then TensorFlow."""
    _load_plugins(args.plugin)
    from .registry import require_declared_plugins
    from .rundir import SPEC

    spec = Path(args.run) / SPEC
    if spec.is_file():
        require_declared_plugins(spec)            # before TensorFlow unless --plugin already imported it
    import_tensorflow()


def _load_plugins(names) -> None:
    """Import the `--plugin` modules BEFORE the spec is read, so its layer names resolve and validate.

    Without --plugin nothing is imported (`kspec validate` stays free of TensorFlow)."""
    if not names:
        return
    import_tensorflow()                  # a plugin imports Keras: import it with the start-up noise muted
    from .registry import load_plugins

    load_plugins(names)


def cmd_build(args) -> int:
    if args.output:
        from .rundir import check_model_output

        check_model_output(Path(args.output), [args.spec])    # never onto the spec, nor a file kspec did not write
    _trust(args)
    spec = _load_spec(args)
    import_tensorflow()
    import keras

    from .builder import build_model, compile_model, describe

    keras.utils.set_random_seed(spec.seed)        # seeded like `kspec train`: two builds, the same weights
    model = build_model(spec.model, spec.name)
    if spec.train is not None:
        compile_model(model, spec.train, spec.model)
    out_dir = Path(args.output).parent if args.output else None
    print(describe(model, out_dir, Path(args.output).stem if args.output else "model"))
    if args.output:
        from .rundir import atomic_save_model

        atomic_save_model(model, Path(args.output), written_by="kspec build")
        print(f"saved the compiled, untrained model to {args.output}")
    return 0


def cmd_train(args) -> int:
    _trust(args)
    spec = _load_spec(args)
    workers = args.workers
    several = (workers is not None and workers > 1) or args.cluster is not None or args.worker_index is not None
    from .train.ensemble import check_single_process

    check_single_process(spec, several)           # the trainer runs the same check (TF_CONFIG): exit 2 both
    if workers is not None and workers > 1:
        if args.cluster is not None or args.worker_index is not None:
            from .distribute.cluster import ClusterError

            raise ClusterError("--workers starts a local cluster of its own; it cannot be combined with "
                               "--cluster/--worker-index")
        from .distribute.launch import launch_local

        return launch_local(args.spec, _worker_args(args), workers)
    if args.cluster is not None or args.worker_index is not None:
        import dataclasses

        from .distribute.cluster import use_cluster

        use_cluster(args.cluster, args.worker_index)  # TF_CONFIG, set before TensorFlow starts
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, distribute="multi_worker")) \
            if spec.train is not None else spec
        workers = 1
    splits = None
    if spec.data is not None and spec.train is not None:
        from .data import load_splits

        splits = load_splits(spec.data, spec.model, spec.seed)     # bad data fails before TensorFlow loads
        from .train.losscheck import check_losses, spec_output_units

        check_losses(spec, splits, spec_output_units(spec))   # a loss that cannot fit: before TensorFlow too
    import_tensorflow()
    from .train import train

    train(spec, run_dir=args.run_dir, resume=args.resume, workers=workers, verbose=args.verbose, splits=splits)
    return 0


def _worker_args(args) -> list[str]:
    """The options of `kspec train` that each worker of `--workers N` gets as they were given."""
    out: list[str] = []
    for value in args.overrides:
        out += ["--set", value]
    for name in args.plugin:
        out += ["--plugin", name]
    for path in args.trust:
        out += ["--trust", path]
    if args.run_dir:
        out += ["--run-dir", args.run_dir]
    if args.resume:
        out.append("--resume")
    if args.verbose is not None:
        out += ["--verbose", str(args.verbose)]
    return out


def cmd_tune(args) -> int:
    _load_plugins(args.plugin)
    from .tune.command import tune

    return tune(args.spec, args.overrides, args.plugin, args.trials, args.parallel, args.storage, args.study,
                args.resume)


def cmd_check(args) -> int:
    _trust(args)
    spec = _load_spec(args)
    import_tensorflow()
    overfit = args.overfit
    if overfit is None and not args.gradients:
        overfit = 16                              # the default check: can it memorise 16 examples?
    status = 0
    if args.gradients:
        from .diagnose.gradcheck import check_gradients
        from .diagnose.overfit import build_for_check

        model, _ = build_for_check(spec)
        results = check_gradients(model, all_layers=args.all, seed=spec.seed)
        what = "layers with trainable weights" if args.all else "plugin and kspec layers"
        if not results:
            print(f"gradient check: no {what} in this model"
                  + ("" if args.all else " (--all checks every layer with trainable weights)"))
        else:
            print(f"gradient check ({what}; analytic vs central differences in float64):")
            for r in results:
                print(r.line())
            failed = [r for r in results if not r.passed]
            if failed:
                names = ", ".join(f"'{r.layer}' ({r.cls})" for r in failed)
                print(f"gradient check FAILED for {names}: the analytic gradient (a tf.custom_gradient, or "
                      f"a non-differentiable op in call) disagrees with finite differences "
                      f"(tolerance {failed[0].tolerance:g})")
                status = 1
            else:
                checked = [r for r in results if not r.skipped]
                print(f"gradients ok for {len(checked)} layer{'s' * (len(checked) != 1)}")
        sys.stdout.flush()
    if overfit is not None:
        from .diagnose.overfit import check_overfit

        print(f"training on {overfit} examples for up to {args.epochs} epochs...", flush=True)
        result = check_overfit(spec, overfit, args.epochs)
        print(result.message)
        if not result.memorised:
            status = 1
    return status


def cmd_compare(args) -> int:
    from .compare import compare_runs

    comparison = compare_runs(args.runs, args.output)
    print(comparison.table)
    print(f"wrote {comparison.png}")
    return 0


def cmd_evaluate(args) -> int:
    _trust(args)
    _run_plugins(args)
    from .train.evaluate import evaluate_run

    evaluate_run(args.run, data=args.data)
    return 0


def cmd_predict(args) -> int:
    _trust(args)
    _run_plugins(args)
    from .train.predict import predict_run

    predict_run(args.run, args.input, output=args.output)
    return 0


def cmd_export(args) -> int:
    _trust(args)
    _run_plugins(args)
    from .export import export_run

    export_run(args.run, args.format, args.output)
    return 0


def cmd_serve(args) -> int:
    from .serve.main import Options, serve

    _load_plugins(args.plugin)        # only --plugin modules: never the `plugins:` of the run's spec.yaml
    return serve(Options(args.run, args.host, args.port, args.model_name, args.max_batch_size, args.max_latency_ms,
                         args.max_queue, args.max_body_bytes, args.max_image_pixels, args.trust))


def _serve_args(s: argparse.ArgumentParser) -> None:
    from .serve import defaults as d

    s.add_argument("run", help="run directory")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=d.PORT,
                   help=f"port ({d.PORT}, TF Serving's REST port; 0 picks a free one)")
    s.add_argument("--model-name", metavar="NAME",
                   help="the model's name in /v1/models/NAME (default: the spec's name)")
    s.add_argument("--max-batch-size", type=int, default=d.MAX_BATCH_SIZE, metavar="N",
                   help=f"gather concurrent requests into batches of up to N examples ({d.MAX_BATCH_SIZE})")
    s.add_argument("--max-latency-ms", type=float, default=d.MAX_LATENCY_MS, metavar="MS",
                   help=f"how long a request may wait for others to join its batch ({d.MAX_LATENCY_MS:g})")
    s.add_argument("--max-queue", type=int, default=d.MAX_QUEUE, metavar="N",
                   help=f"requests waiting for the model before the server answers 503 busy ({d.MAX_QUEUE})")
    s.add_argument("--max-body-bytes", type=int, default=d.MAX_BODY_BYTES, metavar="N",
                   help=f"larger request bodies get 413 ({d.MAX_BODY_BYTES})")
    s.add_argument("--max-image-pixels", type=int, default=d.MAX_IMAGE_PIXELS, metavar="N",
                   help=f"larger images (width x height) are refused before decoding ({d.MAX_IMAGE_PIXELS})")
    s.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module of layers the model uses (the run's own `plugins:` are never imported)")
    s.add_argument("--trust", action="store_true",
                   help="load the model with Keras safe_mode off (runs code stored in it: only for runs you made)")


def cmd_templates(args) -> int:
    from .templates import list_templates

    templates = list_templates(args.kind)
    width = max((len(t.id) for t in templates), default=0)
    for t in templates:
        print(f"{t.id:<{width}}  {t.summary}".rstrip())
    return 0


def cmd_init(args) -> int:
    import shlex

    from .templates import init

    path = init(args.name, args.output, args.template)
    print(f"wrote {path} (from {args.template})")
    print(f"next: kspec train {shlex.quote(str(path))}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kspec", description="Compile a YAML spec into a Keras model and train it.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", help="check specs (schema + meaning) without importing TensorFlow")
    _spec_args(s, many=True)
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("resolve", help="print the fully resolved spec")
    _spec_args(s)
    s.set_defaults(func=cmd_resolve)

    s = sub.add_parser("schema", help="print the JSON Schema of the spec format (for editors)")
    s.add_argument("--component", metavar="KIND", help="print a component schema instead (layers, optimizers, ...)")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("build", help="compile the model; print its summary; -o saves it untrained")
    _spec_args(s, trust=True)
    s.add_argument("-o", "--output", metavar="MODEL.keras", help="save the compiled, untrained model")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("train", help="build, train, evaluate and save a run directory")
    _spec_args(s, trust=True)
    s.add_argument("--run-dir", metavar="DIR", help="run directory (default: runs/NAME/TIMESTAMP)")
    s.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="train with N local worker processes (MultiWorkerMirroredStrategy on loopback)")
    s.add_argument("--cluster", metavar="HOST:PORT,...",
                   help="this process is one worker of a multi-worker cluster: every worker's address, "
                        "worker 0 (the chief) first; with --worker-index (sets TF_CONFIG)")
    s.add_argument("--worker-index", type=int, metavar="I", help="this worker's index in --cluster")
    s.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                   help="0 silent, 1 progress bar, 2 one line per epoch (default: 1 on a terminal, else 2)")
    _cache_dir_arg(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("tune", help="search the spec's `search:` parameters with Optuna; each trial a `kspec train`")
    _spec_args(s)
    s.add_argument("--trials", type=int, metavar="N", help="trials in the study in total (default: search.trials)")
    s.add_argument("--parallel", type=int, default=1, metavar="K", help="run K trials at once on this machine (1)")
    s.add_argument("--storage", metavar="URL", help="`auto` (a journal file in the study directory) or "
                                                    "postgresql://... shared by several machines")
    s.add_argument("--study", metavar="NAME", help="the study's name (default: the spec's name); runs/NAME-study/")
    s.add_argument("--resume", action="store_true",
                   help="continue the study; trials of a dead tuner on this machine are taken over at once")
    _cache_dir_arg(s)
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("check", help="debug a spec: can the model memorise a few examples (--overfit K); "
                                     "are its custom layers' gradients right (--gradients)")
    _spec_args(s, trust=True)
    s.add_argument("--overfit", type=int, nargs="?", const=16, default=None, metavar="K",
                   help="train on K training examples (default 16) until memorised; exit 1 if it cannot "
                        "(the default check when no other is named)")
    s.add_argument("--epochs", type=int, default=300, metavar="N", help="at most N epochs for --overfit (300)")
    s.add_argument("--gradients", action="store_true",
                   help="numerical gradient check (float64) of plugin and kspec layers; exit 1 if one is wrong")
    s.add_argument("--all", action="store_true", help="with --gradients: check every layer with trainable weights")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("compare", help="learning curves of several runs in one PNG, and a table of final metrics")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    s.add_argument("-o", "--output", default="compare.png", metavar="PNG", help="where to write the plot (compare.png)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("evaluate", help="metrics of a saved run on its test split or other data")
    s.add_argument("run", help="run directory")
    s.add_argument("--data", metavar="SPEC_OR_FILE", help="evaluate on another data source (CSV/NPZ file)")
    _plugin_arg(s)
    _trust_arg(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("predict", help="predictions of a saved run for a file of inputs")
    s.add_argument("run", help="run directory")
    s.add_argument("input", help="CSV or NPZ file of inputs")
    s.add_argument("-o", "--output", metavar="FILE", help="write predictions here (.csv or .npz; default: stdout CSV)")
    _plugin_arg(s)
    _trust_arg(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export a run's model: keras, saved_model, tflite or onnx")
    s.add_argument("run", help="run directory")
    s.add_argument("--format", required=True, choices=("keras", "saved_model", "tflite", "onnx"))
    s.add_argument("-o", "--output", required=True, metavar="PATH")
    _plugin_arg(s)
    _trust_arg(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("serve", help="serve a run over HTTP: TF Serving's REST API, /predict, and a page to try it")
    _serve_args(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("templates", help="list the reusable templates in specs/ (blocks, heads, backbones, recipes, starters)")
    s.add_argument("--kind", choices=("blocks", "heads", "backbones", "recipes", "starters"),
                   help="list only this kind")
    s.set_defaults(func=cmd_templates)

    s = sub.add_parser("init", help="start a new spec from a starter template")
    s.add_argument("name", help="the new spec's name (also its file name, NAME.yaml, unless -o)")
    s.add_argument("--from", dest="template", required=True, metavar="TEMPLATE",
                   help="a starter: mlp_classifier, cnn_classifier, regressor, transfer (see `kspec templates`)")
    s.add_argument("-o", "--output", metavar="PATH", help="where to write it (default: ./NAME.yaml)")
    s.set_defaults(func=cmd_init)
    return p


def _quiet_tensorflow() -> None:
    """TensorFlow's C++ start-up chatter (CUDA probing, CPU features) says nothing a user can act on."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


# Modules Keras imports at start-up when they are installed, for features kspec never uses
# (keras.wrappers' scikit-learn estimators, keras.visualization's pyplot image galleries): 0.9 s of
# `import tensorflow` measured here (bench/train_speed.py). Keras guards both with `try: import ...
# except ImportError`, so they are hidden while it loads and put back right after: a later
# `import sklearn` (synthetic data sets) or matplotlib import (the curves) works as usual.
KERAS_UNUSED_IMPORTS = ("sklearn", "matplotlib.pyplot")


def import_tensorflow() -> None:
    """Import TensorFlow (and Keras) and probe devices with stderr muted at the file-descriptor level.

    TF 2.21 logs through absl before `TF_CPP_MIN_LOG_LEVEL` applies, and the
    CUDA probe on a machine without a GPU prints an "error" that is not one.
    Set KSPEC_DEBUG=1 to see it all.

    Then the objects the import created (about 560,000: TensorFlow's and Keras's modules, which
    live as long as the process) are frozen out of the cyclic garbage collector (`gc.freeze`): each
    full collection during training, and the ones at exit, walked them all (1.2 s of a run's exit
    measured here), and none of them is ever garbage.
    """
    if os.environ.get("KSPEC_DEBUG") or "tensorflow" in sys.modules:
        return
    import gc
    import importlib

    hidden = [name for name in KERAS_UNUSED_IMPORTS if name not in sys.modules]
    collecting = gc.isenabled()
    gc.disable()
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        sys.modules.update(dict.fromkeys(hidden))  # type: ignore[arg-type]  # None in sys.modules: `import` raises ImportError
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
        importlib.import_module("keras")      # TensorFlow imported it already: make sure it loads while they are hidden
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        gc.freeze()
        if collecting:
            gc.enable()


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    args = parser().parse_args(argv)
    try:
        _use_cache_dir(args)
        return args.func(args)
    except KspecError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:   # SIGINT, or SIGTERM during training (compiler/train/interrupt.py)
        print("kspec: interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug in kspec, not a user error: say so, briefly
        if os.environ.get("KSPEC_DEBUG"):
            raise
        print(f"kspec: internal error: {type(exc).__name__}: {exc}\n"
              "  (this is a bug in kspec; run again with KSPEC_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
