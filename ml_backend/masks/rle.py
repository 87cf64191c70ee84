"""Label Studio brush RLE, vectorised.

Produces exactly the bytes of ``label_studio_sdk.converter.brush.mask2rle`` (the tests compare them on random and
real masks, and decode with the SDK's ``decode_rle``), in a few numpy passes over the pixels instead of a Python
loop over runs plus string concatenation: about 1-2 ms instead of 7-30 ms for a 2-MP mask, which is most of the
per-click overhead outside the model. The SDK's encoder is used for anything but a plain 2-D uint8 mask.

The format (the SDK's ``encode_rle`` on the mask repeated 4 times, as RGBA): a 32-bit length, 5 bits word size - 1
(7), four 4-bit run-size classes - 1 (3, 4, 8, 16 bits), then per run a token ``flag(1) class(2) length-1 value(8)``
(runs longer than 65536 are split into 65536-long tokens first), zero-padded with 1..8 bits to whole bytes.
"""

from __future__ import annotations

import numpy as np

_HEADER_SIZES = (3, 4, 8, 16)
_CHUNK = 1 << 16


def _header_bits(num: int) -> np.ndarray:
    bits = f"{num:032b}" + f"{7:05b}" + "".join(f"{s - 1:04b}" for s in _HEADER_SIZES)
    return np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0")


def mask2rle(mask: np.ndarray) -> list[int]:
    """Same result as ``label_studio_sdk.converter.brush.mask2rle(mask)``."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        from label_studio_sdk.converter.brush import mask2rle as sdk_mask2rle

        return sdk_mask2rle(mask)
    flat = mask.ravel()
    n = flat.size
    if n == 0:
        from label_studio_sdk.converter.brush import mask2rle as sdk_mask2rle

        return sdk_mask2rle(mask)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    values = flat[starts].astype(np.int64)
    lengths = np.diff(np.concatenate((starts, [n]))).astype(np.int64) * 4  # every pixel is 4 RGBA bytes

    # Size class by the run's length; a run longer than 256 is written with 16-bit lengths, in 65536-long
    # tokens plus the remainder (which keeps the 16-bit class however short it is), as the SDK's loop does.
    cls = np.select([lengths <= 8, lengths <= 16, lengths <= 256], [0, 1, 2], default=3)
    full = np.where(lengths > 256, (lengths - 1) // _CHUNK, 0)
    if full.any():
        reps = full + 1
        values = np.repeat(values, reps)
        cls = np.repeat(cls, reps)
        last = np.cumsum(reps) - 1
        token_len = np.full(int(reps.sum()), _CHUNK, dtype=np.int64)
        token_len[last] = lengths - full * _CHUNK
        lengths = token_len

    # Token = flag, class (2 bits), length - 1 (3/4/8/16 bits), value (8 bits). Length 1 is "0 00 000 value".
    size = np.array(_HEADER_SIZES, dtype=np.int64)[cls]
    single = lengths == 1
    flag = np.where(single, 0, 1)
    length_field = np.where(single, 0, lengths - 1)
    width = 1 + 2 + size + 8
    code = (((flag << 2) | cls) << size | length_field) << 8 | values

    # Right-align each token in 32 bits, unpack to bits and keep the last `width` bits of each row.
    words = (code << (32 - width)).astype(">u4")
    bits = np.unpackbits(words.view(np.uint8).reshape(-1, 4), axis=1)
    keep = np.arange(32)[None, :] < width[:, None]
    body = bits[keep]

    header = _header_bits(n * 4)
    total = header.size + body.size
    pad = 8 - total % 8  # 1..8 zero bits, exactly as the SDK pads
    stream = np.concatenate((header, body, np.zeros(pad, np.uint8)))
    return np.packbits(stream).tolist()
