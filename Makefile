# Two commands on a fresh clone: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What the test suite needs; each role installs only its own extra elsewhere.
TEST_EXTRAS ?= train,export,serve,client,batch,dev

.PHONY: test serve serve-flip bento bench bench-peers lint format clean

$(VENV)/.installed-$(TEST_EXTRAS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$(TEST_EXTRAS)]'
	touch $@

# Lint, then the whole suite. pytest exits 5 when it collects nothing: treat that as a failure,
# since a suite that ran no test proves nothing.
test: $(VENV)/.installed-$(TEST_EXTRAS)
	bash scripts/install_chromium.sh
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The service needs only the `serve` extra (BentoML, ONNX Runtime, OpenVINO, numpy, Pillow; no
# torch); the `client` extra beside it, so that the README's client commands run in the same venv.
$(VENV)/.installed-serve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[serve,client]'
	touch $@

# Serve models/model.onnx (or $$TIN_MODEL: a file, or a model in BentoML's store) on
# http://localhost:$(PORT) from the repo root, where bentofile.yaml names the service. Settings:
# see serving/config.py (TIN_BACKEND, TIN_PRECISION, TIN_API_KEYS, ...). It listens on this
# machine only; HOST=0.0.0.0 exposes it (with TIN_API_KEYS set: README, "Serving").
PORT ?= 3000
HOST ?= 127.0.0.1
serve: $(VENV)/.installed-serve
	@model="$${TIN_MODEL:-models/model.onnx}"; case "$$model" in */*|*.onnx) \
	  if [ ! -f "$$model" ]; then \
	  echo "No model at $$model. The default model, models/model.onnx, is an ONNX file written" >&2; \
	  echo "by the export stage (python -m export, see README.md); set TIN_MODEL=/path/to.onnx" >&2; \
	  echo "to serve another exported model, or TIN_MODEL=name:version for a stored one." >&2; \
	  exit 1; fi;; esac
	@$(PY) -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))' $(HOST) $(PORT) 2>/dev/null || { 	  echo "error: port $(PORT) on $(HOST) is in use (another server?); serve on another: PORT=3001 make serve" >&2; exit 1; }
	$(VENV)/bin/bentoml serve --host $(HOST) --port $(PORT)

# The accuracy mode: the shipped model with flip averaging in its graph (+0.9 point top-1, twice
# the compute), and its INT8 forms, made from models/model.onnx on first use (the test
# environment and the data: TINY_IMAGENET=path/to/tiny-imagenet-200.zip; 19 min on 2 cores).
FLIP_MODEL ?= models/flip/model.onnx
$(FLIP_MODEL): models/model.onnx $(VENV)/.installed-$(TEST_EXTRAS)
	@[ -n "$(TINY_IMAGENET)" ] || { echo "set TINY_IMAGENET to the data's zip" >&2; exit 2; }
	$(PY) -m export --onnx models/model.onnx --out $(FLIP_MODEL) --tta-flip --int8 \
	  --data $(TINY_IMAGENET)
serve-flip: $(FLIP_MODEL)
	TIN_MODEL=$(FLIP_MODEL) $(VENV)/bin/bentoml serve --host $(HOST) --port $(PORT)

# A Bento with the model as a BentoML model: store models/model.onnx (with its INT8 forms and
# card), then build with it. `bentoml build` installs uv into the venv where it finds none.
bento: $(VENV)/.installed-serve
	$(PY) -m serving.store models/model.onnx
	TIN_MODEL=tiny-imagenet-resnet:latest $(VENV)/bin/bentoml build

# CPU inference speed of every engine × precision (bench/inference.py: ONNX Runtime fp32 and
# INT8, OpenVINO fp32, bf16 and INT8, PyTorch eager with the checkpoint; batch 1-256), then the
# HTTP service's (bench/http.py via scripts/bench_http.sh: ONNX Runtime fp32 against `auto`,
# /explain beside /classify), then Ray Data batch prediction against a plain loop and the HTTP
# client (bench/batch.py), then a fuzz of the HTTP API (schemathesis and broken files,
# scripts/fuzz_http.sh), all appended to BENCHMARKS.md: about 15 minutes on 2 cores. Run it on an
# otherwise idle machine. The HTTP and batch parts take their JPEGs from $$TINY_IMAGENET_VAL_IMAGES
# (synthetic ones without it).
BENCH_MODEL ?= models/model.onnx
BENCH_CHECKPOINT ?= models/model.pt
BENCH_OUT ?= BENCHMARKS.md
bench: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) -m bench.inference --model $(BENCH_MODEL) --write $(BENCH_OUT) \
	  $$([ -f "$(BENCH_CHECKPOINT)" ] && echo --checkpoint $(BENCH_CHECKPOINT))
	bash scripts/bench_http.sh $(PY) $(BENCH_MODEL) $(BENCH_OUT)
	$(PY) -m bench.batch --model $(BENCH_MODEL) --write $(BENCH_OUT) \
	  $${TINY_IMAGENET_VAL_IMAGES:+--images "$$TINY_IMAGENET_VAL_IMAGES"}
	bash scripts/fuzz_http.sh $(PY) $(BENCH_MODEL) $(BENCH_OUT)

# This service beside LitServe and Triton (PyTriton) on the same model, decode and engine, one at
# a time under the same `hey` load (bench/peers.py); the peers live in venvs outside the work tree
# (scripts/peers_setup.sh: hey from apt, LitServe, PyTriton on a Python 3.12 with a shared
# libpython). About 8 minutes; run it on an otherwise idle machine.
bench-peers: $(VENV)/.installed-$(TEST_EXTRAS)
	bash scripts/peers_setup.sh
	$(PY) -m bench.peers --write $(BENCH_OUT) \
	  $${TINY_IMAGENET_VAL_IMAGES:+--image "$$(ls "$$TINY_IMAGENET_VAL_IMAGES"/*.JPEG | head -1)"}

lint: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
