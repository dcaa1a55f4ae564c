"""`kspec tune`: hyper-parameter search over a spec's `search:` section, on Optuna (see space.py, runner.py)."""
