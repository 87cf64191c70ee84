"""Label Studio brush RLE, vectorised, and its reader with the checks an untrusted stream needs.

Produces exactly the bytes of ``label_studio_sdk.converter.brush.mask2rle`` (the tests compare them on random and
real masks, and decode with the SDK's ``decode_rle``), in a few numpy passes over the pixels instead of a Python
loop over runs plus string concatenation: about 1-2 ms instead of 7-30 ms for a 2-MP mask, which is most of the
per-click overhead outside the model. The SDK's encoder is used for anything but a plain 2-D uint8 mask.

The format (the SDK's ``encode_rle`` on the mask repeated 4 times, as RGBA): a 32-bit length, 5 bits word size - 1
(7), four 4-bit run-size classes - 1 (3, 4, 8, 16 bits), then per run a token ``flag(1) class(2) length-1 value(8)``
(runs longer than 65536 are split into 65536-long tokens first), zero-padded with 1..8 bits to whole bytes.

``decode_rle`` reads that format back (the editor's own strokes included) after checking the header against the
size the caller expects and against what the stream's length can encode, so a few bytes cannot claim gigabytes.
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


class RLEError(ValueError):
    """A brush RLE that is malformed or claims another size than the region it belongs to."""


def rle_header(rle: bytes | bytearray | list[int]) -> tuple[int, int, tuple[int, ...]]:
    """``(values, word size, run-size classes)`` from the first 53 bits, without decoding anything."""
    if len(rle) < 7:
        raise RLEError("is shorter than its 53-bit header")
    head = int.from_bytes(bytes(rle[:8]).ljust(8, b"\0"), "big")  # 64 bits; the header is the top 53
    num = head >> 32
    word = ((head >> 27) & 0x1F) + 1
    sizes = tuple(((head >> (23 - 4 * i)) & 0xF) + 1 for i in range(4))
    return num, word, sizes


def decode_rle(rle: bytes | bytearray | list[int], expected_values: int) -> np.ndarray:
    """The values of a Label Studio brush RLE (RGBA bytes, so 4 per pixel), refusing before any allocation a
    stream whose header claims other than ``expected_values`` or more values than its length can encode.

    The SDK's ``decode_rle`` allocates whatever 32-bit length the header claims (4 GB from a few bytes) and
    expands the stream to a Python string of bits first; this reads the same format with the header checked
    first, and its tokens straight from the bits (``RLEError`` for anything malformed)."""
    data = np.frombuffer(bytes(rle), np.uint8)
    num, word, sizes = rle_header(data)
    if num != expected_values:
        raise RLEError(f"claims {num} values, but its region has {expected_values}")
    if word > 8:
        raise RLEError(f"has {word}-bit words; brush masks are bytes (8 bits)")
    body_bits = data.size * 8 - 53
    # The most values a bit of stream can stand for: a repeat token of the largest class, 1+2+size+word bits.
    capacity = max((1 << s) / (3 + s + word) for s in sizes) * body_bits
    if num > capacity:
        raise RLEError(f"claims {num} values, more than its {data.size} bytes can encode")
    bits = np.unpackbits(data)[53:].tobytes().translate(bytes.maketrans(b"\x00\x01", b"01")).decode("ascii")
    total = len(bits)
    values: list[int] = []
    lengths: list[int] = []
    i = pos = 0
    while i < num:
        if pos + 3 > total:
            raise RLEError("ends before its last run")
        repeat = bits[pos] == "1"
        size = sizes[int(bits[pos + 1 : pos + 3], 2)]
        pos += 3
        if pos + size > total:
            raise RLEError("ends inside a run length")
        count = int(bits[pos : pos + size], 2) + 1
        pos += size
        reads = 1 if repeat else count
        if pos + reads * word > total:
            raise RLEError("ends inside a run's values")
        if repeat:
            values.append(int(bits[pos : pos + word], 2))
            lengths.append(count)
        else:
            values.extend(int(bits[p : p + word], 2) for p in range(pos, pos + count * word, word))
            lengths.extend([1] * count)
        pos += reads * word
        i += count
    out = np.repeat(np.asarray(values, np.uint8), np.asarray(lengths, np.int64))
    return out[:num]  # the last run may reach past the end, as the editor's own decoder allows
