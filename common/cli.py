"""The command-line convention every `python -m ...` of the project follows, and its one error
type for configuration.

A bad option or value is one line on stderr, `error: ...`, and exit status 2: no usage block, no
traceback. Scripts and people can then tell "you asked for something unsupported" (2) from a
failure of the work itself (a traceback, exit 1).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys


class ConfigError(ValueError):
    """A configuration key, value or option that is not supported; the message lists the valid
    ones. Raised by every package's config (training presets, augmentation, schedules, the
    service's environment variables), so each CLI catches one type."""


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose usage errors are one `error: ...` line and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def require_extra(package: str, extra: str, modules: tuple[str, ...]) -> None:
    """Called by a package's __init__: if a module its extra installs is missing, say which extra
    to install. Under `python -m` (sys.argv[0] is still "-m" while the package imports) that is
    one `error:` line and exit status 2, as for any usage error, not a traceback; imported from
    code, a ModuleNotFoundError with the same words."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = (
        f"{package} needs the `{extra}` extra ({missing[0]} is not installed): "
        f".venv/bin/pip install -e '.[{extra}]'"
    )
    if sys.argv[:1] == ["-m"]:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)
    raise ModuleNotFoundError(message, name=missing[0])


def fail(error: BaseException | str) -> int:
    """Print `error: ...` for a refused request and return the exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2
