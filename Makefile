# Every target sets itself up: a fresh clone needs only python3 (>= 3.10) and network access to PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The exact versions the suite passed with (`make lock` rewrites it).
LOCK   := constraints.txt
EXTRAS := test,onnx,serve,tune

.PHONY: demo test lint test-fast test-latest lock fuzz schemas bench clean

# The venv is installed from the lock: a fresh machine gets what CI tested, not whatever is newest.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip -c $(LOCK)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]' -c $(LOCK)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kspec train examples/iris_mlp.yaml    # a new runs/iris-mlp/TIME/ each time; the last line says where

# Lint and types first (seconds), then the whole suite on 2 processes.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check compiler
	$(BIN)/mypy

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The newest versions pyproject.toml allows, in a venv of their own: upgrades are a decision, not a surprise.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip
	.venv-latest/bin/python -m pip install -q -e '.[$(EXTRAS)]'
	.venv-latest/bin/python -m pytest -q -n 2 --dist loadfile

# Rewrite the lock from the newest allowed versions; run `make test` before committing it.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q -e '.[$(EXTRAS)]'
	.venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v '^-e ' > $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK); now: make test"

fuzz: $(STAMP)
	KSPEC_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q tests/test_fuzz.py

schemas: $(STAMP)
	$(BIN)/python -m compiler.schemagen

bench: $(STAMP)
	$(BIN)/python bench/validate_speed.py
	$(BIN)/python bench/build_overhead.py
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/tune_overhead.py
	$(BIN)/python bench/image_folder.py
	$(BIN)/python bench/csv_stream.py
	$(BIN)/python bench/serve_load.py

clean:
	rm -rf $(VENV) .venv-latest .venv-lock runs *.egg-info
