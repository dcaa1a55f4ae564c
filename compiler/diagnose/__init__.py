"""Diagnostics that make training debuggable (the seed texts' "Diagnosis" points).

    overfit.check_overfit(spec, k=16, epochs=300)  -> OverfitResult   "can it memorise 16 examples?"
    gradcheck.check_gradients(model, ...)         -> [LayerCheck]     numerical gradient check (float64)
    curves.diagnose(history)                      -> [Finding]        learning-curve diagnosis in words
    curves.diagnose_run(run_dir) / write_diagnosis(run_dir, findings) (diagnosis.txt)
    curves.report_run(run_dir, verbose)           both + print: the end-of-training hook
    update_ratio.UpdateRatio(log_path, ...)       a Keras callback: ||dW|| / ||W|| per layer (~1e-3 healthy)
    update_ratio.diagnostic_callbacks(spec, run_dir) -> the callbacks `train.diagnostics` turns on

`kspec check SPEC --overfit K | --gradients` and `kspec compare RUN...` (compiler/compare.py)
are the command-line faces of these. Importing this package is cheap: Keras and
TensorFlow are imported by the functions that need them.
"""

from __future__ import annotations

__all__ = ["Finding", "diagnose", "diagnose_run", "write_diagnosis", "format_findings", "report_run",
           "check_overfit", "OverfitResult", "check_gradients", "LayerCheck",
           "UpdateRatio", "diagnostic_callbacks"]

_WHERE = {
    "Finding": "curves", "diagnose": "curves", "diagnose_run": "curves", "write_diagnosis": "curves",
    "format_findings": "curves", "report_run": "curves",
    "check_overfit": "overfit", "OverfitResult": "overfit",
    "check_gradients": "gradcheck", "LayerCheck": "gradcheck",
    "UpdateRatio": "update_ratio", "diagnostic_callbacks": "update_ratio",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
