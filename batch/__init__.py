"""Offline batch prediction on Ray Data: `python -m batch INPUT... --out OUTPUT`, or
`batch.predict_dataset(...)`. Needs the `batch` extra (ray[data]); the service and the client do
not import this package."""

from batch.pipeline import predict_dataset
from batch.sink import read_results

__all__ = ["predict_dataset", "read_results"]
