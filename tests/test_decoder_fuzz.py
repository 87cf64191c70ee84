"""The one image decoder (``ml_backend.media.fetcher.decode_image``) under mutated files of every format Pillow
writes here (``testkit/decoder_fuzz.py``): every outcome is a decoded image or a 4xx with a short message, never
another exception (a 500) and never a Python repr or heap address in the text (issue 37, item 7). Seeded and
bounded to ~30 s; ``benchmarks/decoder_fuzz.py`` is the longer run whose figures are in docs/security.md."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image

from ml_backend.errors import MediaError
from ml_backend.media.fetcher import ACCEPTED_FORMATS, decode_image
from testkit.decoder_fuzz import run, seeds

BUDGET_S = 30.0


def test_seeded_mutants_of_every_format_decode_or_get_a_4xx():
    tried, outcomes, failures = run(functools.partial(decode_image, max_pixels=64_000_000), 37, 40_000, BUDGET_S)
    assert not failures, f"{len(failures)} of {tried} mutants failed, e.g. {failures[:5]}"
    assert tried >= 2_000 and outcomes["ok"] and outcomes["422"], (tried, outcomes)  # the run reached all kinds


def test_every_seed_format_is_decoded_or_refused_by_name():
    for name, data in seeds():
        if name.split("-")[0].split("_")[0].upper() in ACCEPTED_FORMATS:  # what the labeling UIs show: decoded
            assert decode_image(data, 64_000_000).array.ndim == 3, name
            continue
        try:
            assert decode_image(data, 64_000_000).array.dtype == np.uint8
        except MediaError as exc:
            assert exc.status == 422 and "could not be decoded" in exc.message and "0x" not in exc.message, name


def test_16_bit_images_convert_like_8_bit_viewers_without_float_copies():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 65535, (300, 200), dtype=np.uint16)
    values[0, :4] = [0, 128, 257 * 7 + 128, 65535]  # rounding edges
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    gray = decode_image(buf.getvalue(), 10**7).array[..., 0]
    expected = np.clip(np.floor(values.astype(np.float64) * 255.0 / 65535.0 + 0.5), 0, 255).astype(np.uint8)
    assert np.array_equal(gray, expected)
    small = values // 300  # all <= 255: shown as they are, not rescaled
    buf = io.BytesIO()
    Image.fromarray(small.astype(np.uint16)).save(buf, format="PNG")
    assert np.array_equal(decode_image(buf.getvalue(), 10**7).array[..., 0], small.astype(np.uint8))


@pytest.mark.parametrize("fmt", ["DDS", "PCX", "TGA"])
def test_formats_no_labeling_ui_shows_are_refused_before_their_decoder_runs(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, format=fmt)
    with pytest.raises(MediaError) as refused:
        decode_image(buf.getvalue(), 10**7)
    assert refused.value.status == 422 and "JPEG" in refused.value.message


def test_a_16_bit_decode_makes_no_float64_copy():
    import tracemalloc

    values = np.random.default_rng(0).integers(0, 65535, (2000, 2000), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    decode_image(buf.getvalue(), 10**8)  # imports and Pillow's first-use allocations outside the measurement
    tracemalloc.start()
    try:
        decode_image(buf.getvalue(), 10**8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The result (12 MB RGB) and the uint16 copy (8 MB) are needed; a float64 copy alone would be 32 MB (the tree
    # before: 92 MB).
    assert peak < 40 * 2**20, peak / 2**20


def test_large_decodes_take_turns(monkeypatch):
    import threading
    import time

    from ml_backend.media import fetcher

    running, most = [0], [0]
    lock = threading.Lock()
    real = fetcher._pixels

    def counting(im, ops):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        try:
            return real(im, ops)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(fetcher, "_pixels", counting)
    buf = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buf, format="PNG")
    data = buf.getvalue()

    def decode_in_threads() -> int:
        most[0] = 0
        threads = [threading.Thread(target=decode_image, args=(data, 10**7)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return most[0]

    assert decode_in_threads() > 1  # small images decode side by side
    monkeypatch.setattr(fetcher, "LARGE_DECODE_PIXELS", 300 * 200 - 1)  # as if each were above the threshold
    assert decode_in_threads() == 1
