"""Mutated image files for fuzzing the backend's one decoder (``ml_backend.media.fetcher.decode_image``): shared by
the seeded CI test (``tests/test_decoder_fuzz.py``) and the longer run (``benchmarks/decoder_fuzz.py``).

Seeds are small valid files of every format Pillow can write here, in the modes that reach different code
(RGB, L, 16-bit, palette, RGBA), plus the formats Pillow only reads (built by hand: DDS, PSD headers); a mutant
flips bytes, overwrites a stretch with extreme integers, truncates, duplicates or splices. Everything is seeded:
the same seed gives the same files."""

from __future__ import annotations

import io
import random
import re
import struct
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

_SAVE_AS = {  # format -> modes worth a seed each (Pillow writers available without extra libraries)
    "PNG": ("RGB", "L", "I;16", "P", "RGBA", "1"),
    "JPEG": ("RGB", "L", "CMYK"),
    "GIF": ("P", "L"),
    "BMP": ("RGB", "P", "1"),
    "TIFF": ("RGB", "I;16", "L", "CMYK", "F", "1"),
    "WEBP": ("RGB", "RGBA"),
    "ICO": ("RGBA",),
    "PPM": ("RGB", "L", "I;16"),
    "TGA": ("RGB", "P"),
    "PCX": ("RGB", "P"),
    "SGI": ("RGB", "L"),
    "IM": ("RGB", "L"),
    "DDS": ("RGBA", "RGB"),
    "QOI": ("RGB", "RGBA"),
    "MSP": ("1",),
    "XBM": ("1",),
    "SPIDER": ("F",),
    "JPEG2000": ("RGB",),
    "BLP": ("P",),
    "TIFF_LZW": ("RGB",),
}


def seeds() -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of small valid files, one per format and mode that this Pillow can write."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), "RGB")
    out = []
    for fmt, modes in _SAVE_AS.items():
        for mode in modes:
            try:
                if mode == "I;16":
                    image = Image.fromarray(rng.integers(0, 65535, (24, 32), dtype=np.uint16))
                elif mode == "F":
                    image = Image.fromarray(rng.random((24, 32), dtype=np.float32))
                else:
                    image = rgb.convert(mode)
                buf = io.BytesIO()
                if fmt == "TIFF_LZW":
                    image.save(buf, format="TIFF", compression="tiff_lzw")
                else:
                    image.save(buf, format=fmt)
                out.append((f"{fmt.lower()}-{mode}", buf.getvalue()))
            except (OSError, ValueError, KeyError, TypeError):  # a writer this build lacks
                continue
    out.append(("psd-header", b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 24, 32, 8, 3) + bytes(64)))
    return out


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}|object at")  # a Python repr or heap address in a reply
_EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One mutant of ``data``: a few random edits of the kinds that break parsers."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            break
        kind = rng.randrange(6)
        pos = rng.randrange(len(buf))
        if kind == 0:  # flip bits
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:  # random bytes
            for i in range(pos, min(len(buf), pos + rng.randint(1, 8))):
                buf[i] = rng.randrange(256)
        elif kind == 2:  # an extreme integer, either byte order, 2 or 4 bytes
            value, layout = rng.choice(_EXTREMES), rng.choice(("<I", ">I", "<H", ">H"))
            packed = struct.pack(layout, value & (0xFFFF if layout.endswith("H") else 0xFFFFFFFF))
            buf[pos : pos + len(packed)] = packed
        elif kind == 3:  # truncate
            del buf[max(8, pos) :]
        elif kind == 4:  # duplicate a stretch
            end = min(len(buf), pos + rng.randint(1, 64))
            buf[pos:pos] = buf[pos:end]
        else:  # drop a stretch
            del buf[pos : pos + rng.randint(1, 16)]
    return bytes(buf)


def mutants(seed: int, count: int | None = None) -> Iterator[tuple[str, bytes]]:
    """``(seed name, mutant)``, round-robin over the seeds, reproducibly from ``seed``; endless without ``count``."""
    rng = random.Random(seed)
    pool = seeds()
    n = 0
    while count is None or n < count:
        name, data = pool[n % len(pool)]
        yield name, mutate(data, rng)
        n += 1


def run(
    decode: Callable[[bytes], object],
    seed: int,
    count: int | None,
    budget_s: float,
    slow: list[tuple[float, str, bytes]] | None = None,
) -> tuple[int, Counter, list[tuple[str, str]]]:
    """Decode mutants until ``count`` or ``budget_s``: (inputs tried, outcome counts, failures). An outcome is
    ``ok``, or the HTTP status of the ``BackendError`` raised; anything else is a failure (name, exception).
    ``slow`` collects ``(seconds, name, input)`` of the inputs that took over a second."""
    from ml_backend.errors import BackendError

    outcomes: Counter = Counter()
    failures: list[tuple[str, str]] = []
    deadline = time.monotonic() + budget_s
    tried = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about every corrupt tag; outcomes are what is counted
        for name, data in mutants(seed, count):
            if time.monotonic() > deadline:
                break
            tried += 1
            started = time.monotonic()
            try:
                decode(data)
                outcomes["ok"] += 1
            except BackendError as exc:
                outcomes[str(exc.status)] += 1
                if exc.status >= 500 or _ADDRESS.search(exc.message) or len(exc.message) > 400:
                    failures.append((name, f"{exc.status}: {exc.message[:200]}"))
            except Exception as exc:  # what the decoder let through: a 500 in the server
                outcomes["uncaught"] += 1
                failures.append((name, f"{type(exc).__name__}: {str(exc)[:200]}"))
            took = time.monotonic() - started
            if slow is not None and took > 1.0:
                slow.append((took, name, data))
    return tried, outcomes, failures
