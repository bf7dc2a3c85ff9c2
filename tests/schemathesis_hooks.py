"""This API's own schemathesis check, loaded by tests/schemathesis.toml (`hooks`) for both
tests/test_fuzz.py and scripts/fuzz_http.sh. Schemathesis's checks see that no answer is a 5xx and
that each matches the OpenAPI document; this one makes "a clear 4xx" precise."""

from __future__ import annotations

import schemathesis

from serving.openapi import paths

ROUTES = frozenset(paths(max_images=1))  # serving/routes.py's; BentoML's own answer in plain text


@schemathesis.check
def clear_errors(ctx, response, case) -> None:
    """Every 4xx from this API's routes says what was wrong: {"error": {"code", "message"}},
    both non-empty, whatever status it is (405 and the others the document does not list)."""
    if not 400 <= response.status_code < 500 or case.path not in ROUTES:
        return
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not (isinstance(error, dict) and error.get("code") and error.get("message")):
        status, text = response.status_code, response.text[:200]
        raise AssertionError(f"HTTP {status} without an error code and message: {text!r}")
