"""The one error type of the client library (the inputs and the answers both raise it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class ClientError(Exception):
    """A request or an image the service (or the client) refused; `message` is the server's.

    `code` is the server's error code (not_an_image, upload_too_large...) or the client's
    (connection_error, timeout, unreadable_file, bad_input...); `status` is the HTTP status of a
    refused request, None for an image refused inside a batch or when no answer came."""

    message: str
    code: str = "client_error"
    status: int | None = None

    def __post_init__(self):
        super().__init__(self.message)  # args, so that pickling and tracebacks work

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        return f"{self.message} [{where}{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "status": self.status}
