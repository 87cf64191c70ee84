"""The one JSON parser of untrusted input (HTTP bodies, the nuclio handler, Label Studio exports): JSON, or a 400
that says why.

Integers are bounded where they are parsed: JSON allows any number of digits, and a 400-digit coordinate would
otherwise reach ``float()``/numpy deep inside a handler as an ``OverflowError`` (a 500). No field this backend
reads needs more than 64 bits, so a longer integer is refused here, once, for every caller.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import BadRequest

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
MAX_INT_DIGITS = 19  # every signed 64-bit integer; longer ones are refused
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")


class NumberTooLarge(ValueError):
    """An integer literal with more digits than any field here can hold."""


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise NumberTooLarge(f"a number has {digits} digits: integers may have at most {MAX_INT_DIGITS}")
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise NumberTooLarge(f"an integer of {digits} digits does not fit in 64 bits")
    return value


def check_numbers(value: Any) -> Any:
    """``value`` (JSON another parser decoded, e.g. nuclio's) when every integer in it fits in 64 bits, else
    ``BadRequest``: the same bound :func:`loads` applies while parsing. Iterative, so any nesting is fine."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**63:
            digits = int(item.bit_length() * 0.30103) + 1  # about; str() of a huge int is itself bounded by Python
            raise BadRequest(f"request body rejected: an integer of about {digits} digits does not fit in 64 bits")
    return value


def loads(data: bytes | str) -> Any:
    """``json.loads`` with integers bounded to 64 bits (``NumberTooLarge``, a ``ValueError``, above)."""
    # The hook costs a Python call per integer (6x slower on brush RLE): used only when some run of digits is long
    # enough to be such an integer; up to 18 digits always fit.
    pattern = _LONG_DIGITS if isinstance(data, (bytes, bytearray)) else _LONG_DIGITS_TEXT
    if pattern.search(data) is None:
        return json.loads(data)
    return json.loads(data, parse_int=_bounded_int)


def parse_json(data: bytes) -> Any:
    """``data`` as JSON; ``BadRequest`` (400) naming the problem for an empty, non-UTF-8 or invalid body."""
    if not data.strip():
        raise BadRequest("empty request body: a JSON object is expected", status=400)
    try:
        body = loads(data)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 JSON", status=400) from None
    except NumberTooLarge as exc:
        raise BadRequest(f"request body rejected: {exc}", status=400) from None
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
