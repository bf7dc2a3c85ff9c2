"""Offline batch prediction on Ray Data: `python -m batch INPUT... --out OUTPUT`, or
`batch.predict_dataset(...)`. Needs the `batch` extra (ray[data]); the service and the client do
not import this package."""

from common.cli import require_extra

require_extra("batch", "batch", ("ray", "pyarrow", "numpy", "PIL"))

# After the check: these import ray and pyarrow.
from batch.pipeline import predict_dataset  # noqa: E402
from batch.sink import read_results  # noqa: E402

__all__ = ["predict_dataset", "read_results"]
