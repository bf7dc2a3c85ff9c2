# Two commands on a fresh clone: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What the test suite needs; each role installs only its own extra elsewhere.
TEST_EXTRAS ?= train,export,serve,client,dev

.PHONY: test serve bench lint format clean

$(VENV)/.installed-$(TEST_EXTRAS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$(TEST_EXTRAS)]'
	touch $@

# Lint, then the whole suite. pytest exits 5 when it collects nothing: treat that as a failure,
# since a suite that ran no test proves nothing.
test: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The service needs only the `serve` extra (BentoML, ONNX Runtime, numpy, Pillow; no torch).
$(VENV)/.installed-serve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[serve]'
	touch $@

# Serve models/model.onnx (or $$TIN_MODEL) on http://localhost:$(PORT) from the repo root, where
# bentofile.yaml names the service. Settings: see serving/config.py.
PORT ?= 3000
serve: $(VENV)/.installed-serve
	@model="$${TIN_MODEL:-models/model.onnx}"; if [ ! -f "$$model" ]; then \
	  echo "No model at $$model. The default model, models/model.onnx, is an ONNX file written" >&2; \
	  echo "by the export stage (python -m export, see README.md); set TIN_MODEL=/path/to.onnx" >&2; \
	  echo "to serve another exported model." >&2; \
	  exit 1; fi
	$(VENV)/bin/bentoml serve --port $(PORT)

# CPU inference speed (bench/inference.py: PyTorch eager and ONNX Runtime, batch 1-256),
# then the HTTP service's (bench/http.py via scripts/bench_http.sh), then a fuzz of the HTTP
# API (schemathesis and broken files, scripts/fuzz_http.sh), all appended to BENCHMARKS.md:
# 6 minutes on 2 cores. Run it on an otherwise idle machine. The PyTorch row needs
# the training checkpoint (not in git; skipped with a note without it), an INT8 row needs
# BENCH_INT8=path.onnx, and the HTTP part takes its JPEGs from $$TINY_IMAGENET_VAL_IMAGES
# (synthetic ones without it).
BENCH_MODEL ?= models/model.onnx
BENCH_CHECKPOINT ?= runs/final/best-slim.pt
BENCH_INT8 ?=
BENCH_OUT ?= BENCHMARKS.md
bench: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) -m bench.inference --model $(BENCH_MODEL) --write $(BENCH_OUT) \
	  $$([ -f "$(BENCH_CHECKPOINT)" ] && echo --checkpoint $(BENCH_CHECKPOINT)) \
	  $(if $(BENCH_INT8),--int8 $(BENCH_INT8))
	bash scripts/bench_http.sh $(PY) $(BENCH_MODEL) $(BENCH_OUT)
	bash scripts/fuzz_http.sh $(PY) $(BENCH_MODEL) $(BENCH_OUT)

lint: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
