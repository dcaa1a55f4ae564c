# Every target sets itself up: a fresh clone needs only python3 (>= 3.10) and network access to PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast fuzz schemas bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,onnx]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kspec train examples/iris_mlp.yaml    # a new runs/iris-mlp/TIME/ each time; the last line says where

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

fuzz: $(STAMP)
	KSPEC_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q tests/test_fuzz.py

schemas: $(STAMP)
	$(BIN)/python -m compiler.schemagen

bench: $(STAMP)
	$(BIN)/python bench/validate_speed.py
	$(BIN)/python bench/build_overhead.py
	$(BIN)/python bench/train_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info
