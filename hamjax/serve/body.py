"""A request body, read within its size bound and parsed into an input array, or refused with a status.

:func:`read_body` refuses a body over the limit with 413 as soon as its
declared ``Content-Length`` or its streamed size passes it, before anything
is parsed. :func:`parse_inputs` reads JSON ``{"inputs": nested lists, ...}``
or ``.npy`` bytes (``allow_pickle=False``: an object array is refused, never
unpickled) and refuses with 422 what is not a rectangular array of numbers.
"""

from __future__ import annotations

import io
import json

import numpy as np
from starlette.requests import Request

NPY_TYPES = ("application/x-npy", "application/octet-stream")


class Refusal(Exception):
    """A request answered with ``status`` and ``{"detail": detail}``; ``reason`` labels invalid-input metrics.

    Examples:
      >>> err = Refusal(503, "busy", headers={"Retry-After": "1"})
      >>> err.status, err.detail, err.headers, err.reason
      (503, 'busy', {'Retry-After': '1'}, None)
    """

    def __init__(self, status: int, detail: str, *, headers: dict | None = None, reason: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.reason = status, detail, headers or {}, reason


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as its declared or streamed size passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refusal(400, f"Content-Length must be a number of bytes, got {declared!r}")
        if int(declared) > limit:
            raise Refusal(413, f"body of {declared} bytes is over the limit of {limit} bytes", reason="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refusal(413, f"body is over the limit of {limit} bytes", reason="body")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_inputs(body: bytes, content_type: str) -> tuple[np.ndarray, dict]:
    """The inputs array and the JSON fields of a prediction body (``.npy`` bytes carry no fields).

    Args:
      body: the request body.
      content_type: its ``Content-Type``: ``application/x-npy`` (or
        ``application/octet-stream``) reads ``.npy`` bytes, anything else JSON.

    Returns:
      ``(inputs, fields)``: the array (not yet checked against the model) and the JSON object.

    Raises:
      Refusal: 422 for a body that is not JSON or one ``.npy`` array, no ``inputs``, ragged or non-numeric values.

    Examples:
      >>> x, fields = parse_inputs(b'{"inputs": [[1, 2]], "client": "c1"}', "application/json")
      >>> x.tolist(), fields["client"]
      ([[1, 2]], 'c1')
      >>> parse_inputs(b'{"inputs": [["a", 2]]}', "application/json")
      Traceback (most recent call last):
      ...
      hamjax.serve.body.Refusal: inputs: expected numbers, got <U21 values
    """
    if content_type.split(";")[0].strip().lower() in NPY_TYPES:
        try:
            x = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as err:  # numpy raises ValueError, EOFError, OSError or UnicodeError for bad bytes
            raise Refusal(422, f"body is not a .npy array: {err}", reason="npy") from None
        if not isinstance(x, np.ndarray):
            x.close()
            raise Refusal(422, "body is an .npz archive; send one .npy array", reason="npy")
        return x, {}
    try:
        fields = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise Refusal(422, f"body is not JSON: {err}", reason="json") from None
    if not isinstance(fields, dict) or "inputs" not in fields:
        raise Refusal(
            422, 'body must be a JSON object with "inputs": a nested list (batch, *input_shape)', reason="json"
        )
    try:
        x = np.asarray(fields["inputs"])
    except (ValueError, TypeError, OverflowError) as err:
        raise Refusal(422, f"inputs: not a rectangular array of numbers ({err})", reason="shape") from None
    if x.dtype.kind not in "fiu":
        raise Refusal(422, f"inputs: expected numbers, got {x.dtype} values", reason="dtype")
    return x, fields
