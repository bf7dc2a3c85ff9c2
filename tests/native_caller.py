"""A second BentoML service that calls the classifier through bentoml.depends(url=...), for
tests/test_native.py (and as an example):

    TIN_URL=http://127.0.0.1:3000 [TIN_API_KEY=...] bentoml serve tests.native_caller:Caller

With only a URL, BentoML builds the client from the classifier's /schema.json when this service
starts (RemoteProxy.__aenter__), and the proxy is reached through `.to_async` / `.to_sync` (calling
`self.classifier.classify` raises "The proxy is not callable when the service is not provided").
Results come back as dicts; an error answer raises a BentoMLException whose text is the
classifier's JSON body and whose error_code is its status.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.responses import JSONResponse

from clients.bentoml_upload import BytesUpload

URL = os.environ.get("TIN_URL", "http://127.0.0.1:3000")


def passed_on(e: BentoMLException) -> JSONResponse:
    """The classifier's refusal, answered as it was (BentoML would wrap it in a 500 or a
    `[{"error": "<the JSON as a string>"}]` 400)."""
    try:
        body = json.loads(str(e))
    except ValueError:
        body = {"error": {"code": "upstream_error", "message": str(e)[:300]}}
    return JSONResponse(body, status_code=int(e.error_code))


@bentoml.service(name="Caller", workers=1)
class Caller:
    classifier = bentoml.depends(url=URL)

    def __init__(self):
        # The dependency's client is built here and connects after __init__, so a key set now
        # is sent with its first request (/schema.json) too. BENTO_CLOUD_API_KEY in the
        # environment does the same for every BentoML client of this process.
        if key := os.environ.get("TIN_API_KEY"):
            self.classifier.to_async.default_headers["Authorization"] = f"Bearer {key}"

    @bentoml.api
    async def top1(self, image: Path) -> dict:
        """The classifier's first prediction for one image."""
        try:
            # Bytes, not the Path: BentoML's client closes the files of every call in flight
            # when any call ends, which breaks concurrent calls that send paths.
            upload = BytesUpload(image.read_bytes(), image.name)
            result = await self.classifier.to_async.classify(image=upload, top_k=1)
        except BentoMLException as e:
            return passed_on(e)
        return {"via": URL, "top1": result["predictions"][0]}

    @bentoml.api
    async def top1_batch(self, images: list[Path]) -> dict:
        try:
            uploads = [BytesUpload(p.read_bytes(), p.name) for p in images]
            result = await self.classifier.to_async.classify_batch(images=uploads, top_k=1)
        except BentoMLException as e:
            return passed_on(e)
        top1 = [
            r["predictions"][0]["wnid"] if r["predictions"] else r["error"]["code"]
            for r in result["results"]
        ]
        return {"via": URL, "top1": top1}
