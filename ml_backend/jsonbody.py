"""The one parser of request bodies (the HTTP routes and the nuclio handler): JSON, or a 400 that says why."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import BadRequest

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(data: bytes) -> Any:
    """``data`` as JSON; ``BadRequest`` (400) naming the problem for an empty, non-UTF-8 or invalid body."""
    if not data.strip():
        raise BadRequest("empty request body: a JSON object is expected", status=400)
    try:
        body = json.loads(data)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 JSON", status=400) from None
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}", status=400) from None
    if _SURROGATE_ESCAPE.search(data):
        try:  # JSON may escape lone UTF-16 surrogates (\ud800) that no text can hold: refuse them here, once
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "request body holds a lone UTF-16 surrogate escape (such as \\ud800) in a "
                "string: it is not valid Unicode text",
                status=400,
            ) from None
    return body
