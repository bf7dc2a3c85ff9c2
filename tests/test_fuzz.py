"""Fuzzing `bentoml serve` on a fixture model: schemathesis against the service's own OpenAPI
document (/docs.json: every route, serving/openapi.py), then the broken-file and abusive-request
corpus of tests/abuse.py. Pass: no 5xx, every refusal a clear 4xx with an error code, the service
healthy after. A short run; `make bench` runs a longer one (scripts/fuzz_http.sh).

Schemathesis runs as its CLI, as the script runs it: its pytest integration (from_fixture) fails on
pytest 9 in schemathesis 4.32.5 (it reads request.node._nodeid, which pytest 9 removed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests import abuse
from tests.serving_fixtures import REPO

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = 15  # per operation and phase; scripts/fuzz_http.sh runs 300


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


def test_the_document_describes_every_route(server):
    spec = httpx.get(f"{server.url}/docs.json").json()
    assert set(spec["paths"]) == {
        *("/classify", "/classify_batch", "/explain", "/explain_batch"),  # serving/routes.py
        *("/labels", "/model", "/ui"),
        *("/api/classify", "/api/classify_batch", "/api/explain", "/api/explain_batch"),  # native
        *("/healthz", "/livez", "/readyz", "/metrics"),  # BentoML's
    }


def test_schemathesis_finds_nothing(server):
    cli = Path(sys.executable).parent / "schemathesis"
    if not cli.exists():
        pytest.skip("schemathesis is not installed (the dev extra)")
    command = [
        str(cli),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{server.url}/docs.json",
    ]
    command += ["--max-examples", str(EXAMPLES), "--seed", "0"]  # the same cases every run
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counts, done.stdout[-2000:]
    assert int(counts[1]) == int(counts[2]) > 100


def test_broken_files_and_abusive_requests(server):
    # Last in the module: its count of 5xx answers in /metrics covers the fuzzing above too.
    summary = abuse.check(server.url)
    assert abuse.passed(summary), summary
    assert summary["requests"] == summary["as_expected"] > 30
