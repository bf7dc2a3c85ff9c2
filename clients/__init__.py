"""Clients: batch prediction against the serving API over HTTP.

Needs only the `client` extra (httpx, tqdm); Pillow only to send PIL images or numpy arrays.
`python -m clients --help` for the command line.
"""

from clients.client import AsyncTinyImageNetClient, TinyImageNetClient
from clients.results import ClientError, Label, ModelInfo, Prediction, Result

__all__ = [
    "AsyncTinyImageNetClient",
    "ClientError",
    "Label",
    "ModelInfo",
    "Prediction",
    "Result",
    "TinyImageNetClient",
]
