"""Clients: batch prediction against the serving API over HTTP.

Needs only the `client` extra (httpx, tqdm); Pillow only to send PIL images or numpy arrays, and
numpy and Pillow for the activation maps' arrays and overlays. `python -m clients --help` for
the command line.
"""

from clients.client import AsyncTinyImageNetClient, TinyImageNetClient
from clients.errors import ClientError
from clients.results import ClassMap, Explanation, Label, ModelInfo, Prediction, Result

__all__ = [
    "AsyncTinyImageNetClient",
    "ClassMap",
    "ClientError",
    "Explanation",
    "Label",
    "ModelInfo",
    "Prediction",
    "Result",
    "TinyImageNetClient",
]
