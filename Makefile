# Two commands on a fresh clone: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What the test suite needs; each role installs only its own extra elsewhere.
TEST_EXTRAS ?= train,export,serve,client,dev

.PHONY: test serve lint format clean

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

serve:
	@echo "make serve arrives with the serving issue (BentoML service over the exported model)." >&2
	@exit 1

lint: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed-$(TEST_EXTRAS)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
