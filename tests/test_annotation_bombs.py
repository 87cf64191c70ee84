"""Saved regions are untrusted and cheap to write: a few bytes of JSON can claim any size. What an annotator can
plant in a draft or an annotation must cost the backend, the export and the fine-tuning worker what the image
costs, not what the region claims (issue 37, items 4, 5 and 10). Each case measures the Python-side allocation
peak (``tracemalloc``: numpy's buffers are traced) and asserts the check refuses before allocating."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ml_backend.labelstudio import adapter
from ml_backend.labelstudio.regions import RegionError, read_region
from ml_backend.masks.rle import mask2rle

from backend_helpers import make_app, recorded

MB = 1 << 20
W, H = 481, 321  # the recorded task's image (backend_helpers.synthetic_image)


@contextmanager
def peak_below(limit_bytes: int):
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit_bytes, f"peak {peak / MB:.0f} MB, limit {limit_bytes / MB:.0f} MB"


def bomb_rle(claimed_values: int) -> list[int]:
    """A brush RLE of a few bytes whose header claims ``claimed_values`` RGBA bytes (one zero run after it)."""
    header = (claimed_values << 32 | 7 << 27 | 0x3 << 23 | 0x7 << 15 | 0xF << 11 | 0xF << 7 | 0xF << 3) << 0
    header |= 0  # the first token bits below follow the 53-bit header
    return list(struct.pack(">Q", header)) + [0xFF] * 8


def brush(width: int, height: int, rle: list[int], rid: str = "b1") -> dict:
    return {"id": rid, "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": width,
            "original_height": height, "value": {"format": "rle", "rle": rle, "brushlabels": ["Object"]}}  # fmt: skip


def polygon(width: int, height: int, rid: str, points=None, from_name: str = "poly") -> dict:
    points = points or [[1, 1], [99, 1], [99, 99], [1, 99]]
    return {"id": rid, "type": "polygonlabels", "from_name": from_name, "to_name": "image", "original_width": width,
            "original_height": height, "value": {"points": points, "polygonlabels": ["Object"]}}  # fmt: skip


# --- the one reader ---------------------------------------------------------------------------------------------


def test_a_brush_rle_claiming_gigabytes_is_refused_before_it_is_decoded():
    for claimed in (2**32 - 1, W * H * 4 + 4):  # 4 GB; one pixel more than the region
        with peak_below(8 * MB), pytest.raises(RegionError, match="holds"):
            read_region(brush(W, H, bomb_rle(claimed)), "draft")
    # Header and region agree (16 MP), but 16 bytes cannot encode 64 M values: refused by the stream's length.
    with peak_below(8 * MB), pytest.raises(RegionError, match="more than its"):
        read_region(brush(4000, 4000, bomb_rle(4000 * 4000 * 4)), "draft")


def test_a_real_brush_rle_still_reads_back_exactly():
    mask = np.zeros((H, W), bool)
    mask[40:200, 100:300] = True
    mask[90:120, 150:160] = False
    region = read_region(brush(W, H, mask2rle(mask.astype(np.uint8) * 255)), "saved")
    assert np.array_equal(region.mask, mask)


def test_a_region_claiming_another_size_is_refused_before_rasterising():
    with peak_below(8 * MB), pytest.raises(RegionError, match="8000x8000"):
        read_region(polygon(8000, 8000, "p"), "draft", 64_000_000, {(W, H)})


# --- /predict: drafts the click may be continuing ----------------------------------------------------------------

CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"><Label value="Object"/>'
    '</BrushLabels><KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/>'
    "</KeyPointLabels></View>"
)


_TASK_IDS = iter(range(100, 10**6))


def predict_with_draft(regions: list[dict]) -> dict:
    """A first click on a new task (a new object: the saved regions are looked at), with ``regions`` in a draft."""
    body = recorded("predict_interactive_1click")
    body["tasks"][0]["id"] = next(_TASK_IDS)
    body["label_config"] = CONFIG
    body["tasks"][0]["drafts"] = [{"id": 1, "result": regions, "updated_at": "2026-01-01T00:00:00Z"}]
    click = body["params"]["context"]["result"][0]
    click["from_name"] = "kp"
    return body


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


def test_a_draft_with_an_rle_bomb_or_oversized_regions_costs_a_normal_click(client):
    client.post("/predict", json=predict_with_draft([]))  # the image decoded and cached before measuring
    oversized = [polygon(8000, 8000, f"p{i}", from_name="tag") | {"type": "brushlabels"} for i in range(3)]
    oversized += [brush(8000, 8000, bomb_rle(8000 * 8000 * 4), f"o{i}") for i in range(20)]
    for regions in ([brush(W, H, bomb_rle(2**32 - 1))], oversized):
        with peak_below(48 * MB):
            reply = client.post("/predict", json=predict_with_draft(regions))
        assert reply.status_code == 200 and reply.json()["results"][0]["result"], reply.text[:200]


def test_a_click_looks_at_a_bounded_number_of_saved_regions(client, monkeypatch):
    reads = []

    def counting(*args, **kwargs):
        reads.append(args[1])
        return read_region(*args, **kwargs)

    monkeypatch.setattr(adapter, "read_region", counting)
    empty = mask2rle(np.zeros((H, W), np.uint8))  # regions of the right size the click is not inside
    body = predict_with_draft([brush(W, H, empty, f"r{i}") for i in range(adapter.MAX_REGIONS_PER_CLICK + 40)])
    assert client.post("/predict", json=body).status_code == 200
    assert len(reads) == adapter.MAX_REGIONS_PER_CLICK
    reads.clear()  # on a large frame the pixel budget binds first: here, as if the frame were 1/5 of the budget
    monkeypatch.setattr(adapter, "REGION_PIXELS_PER_CLICK", W * H * 5)
    body = predict_with_draft([brush(W, H, empty, f"r{i}") for i in range(20)])
    assert client.post("/predict", json=body).status_code == 200
    assert len(reads) == 5


# --- the export and the fine-tuning worker ----------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (30, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _export_peak(tmp_path, tasks: list[dict], name: str, fmt: str, capsys) -> tuple[int, str]:
    from cli import main

    source = tmp_path / f"{name}.json"
    source.write_text(json.dumps(tasks))
    args = ["export", "--from-json", str(source), "--format", fmt, "--out", str(tmp_path / f"{name}-{fmt}")]
    tracemalloc.start()
    try:
        assert main([*args, "--images", str(tmp_path / "images")]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, capsys.readouterr().out


def test_the_export_skips_regions_drawn_on_another_size_and_holds_one_mask_at_a_time(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png(64, 48))
    claims = [polygon(8000, 8000, f"p{i}") for i in range(30)] + [polygon(64, 48, "ok")]
    task = {"id": 1, "data": {"image": "/data/upload/1/a.png"}, "annotations": [{"id": 1, "result": claims}]}
    _export_peak(tmp_path, [task], "warm", "coco", capsys)  # imports outside the measurements
    for fmt in ("yolo-seg", "coco"):
        peak, printed = _export_peak(tmp_path, [task], "claims", fmt, capsys)
        assert peak < 8 * MB and printed.count("region left out: task 1 result[") == 30 and "8000x8000" in printed
        # Without an image to compare with, 30 regions of 1500x1500 (2.25 MB masks, 67 MB together) cost about what
        # one does.
        triangle = [[1, 1], [2, 1], [2, 2]]
        many = [polygon(1500, 1500, f"q{i}", triangle) for i in range(30)]
        tasks = [{"id": 2, "data": {"image": "none.png"}, "annotations": [{"id": 2, "result": regions}]}
                 for regions in (many[:1], many)]  # fmt: skip
        _export_peak(tmp_path, tasks[1:], "warm-thirty", fmt, capsys)  # first-use allocations of this path
        one, _ = _export_peak(tmp_path, tasks[:1], "one", fmt, capsys)
        thirty, _ = _export_peak(tmp_path, tasks[1:], "thirty", fmt, capsys)
        assert thirty < one + 8 * MB, (fmt, one / MB, thirty / MB)
    labels = (tmp_path / "claims-yolo-seg" / "labels" / "train" / "1_a.txt").read_text().splitlines()
    assert len(labels) == 1  # the one region drawn on this image


def test_the_worker_reads_saved_regions_with_the_pixel_limit(monkeypatch):
    from ml_backend.config import Settings
    from ml_backend.finetuning.worker import JobConfig
    from ml_backend.labelstudio.training_data import collect_annotations
    from ml_backend.media.fetcher import decode_image

    settings = Settings.from_env({"MAX_IMAGE_MEGAPIXELS": "16"})
    image = decode_image(_png(64, 48), 10**6)

    class Fetcher:
        def __init__(self):
            self.settings = settings

        def load(self, url, task_id):
            return image

    class API:
        def project(self, project):
            return {"label_config": CONFIG.replace("BrushLabels", "PolygonLabels").replace('"tag"', '"poly"')}

        def annotated_tasks(self, project):
            result = [polygon(12000, 12000, "huge"), polygon(64, 48, "fine")]  # 144 MP claimed, a few bytes
            return [{"id": 1, "data": {"image": "x.png"}, "annotations": [{"id": 5, "result": result}]}]

    cfg = JobConfig()  # imports the training code (outside the measurement)
    with peak_below(32 * MB):
        tasks, stats = collect_annotations(API(), Fetcher(), "1", cfg)
    assert len(tasks) == 1 and len(tasks[0].masks) == 1


def test_our_rle_reader_matches_the_sdk_and_fails_only_with_rle_errors():
    from label_studio_sdk.converter.brush import decode_rle as sdk_decode
    from label_studio_sdk.converter.brush import encode_rle

    from ml_backend.masks.rle import RLEError, decode_rle

    rng = np.random.default_rng(11)
    streams = []
    for shape in ((7, 5), (64, 48), (120, 333)):
        mask = (rng.random(shape) > 0.7).astype(np.uint8) * 255
        mask[: shape[0] // 2] = 0  # long runs too
        streams.append((mask2rle(mask), mask.size * 4))
    values = rng.integers(0, 256, 3000).astype(np.uint8)  # literal tokens, as the editor writes for strokes' edges
    streams.append((encode_rle(values), values.size))
    for rle, size in streams:
        assert np.array_equal(decode_rle(rle, size), sdk_decode(rle))
    rle, size = streams[1]
    for cut in (3, 10, len(rle) // 2, len(rle) - 3):
        with pytest.raises(RLEError):
            decode_rle(rle[:cut], size)
    for i in range(200):  # random damage after the header: decoded, or an RLEError, nothing else
        damaged = list(rle)
        damaged[8 + i % (len(rle) - 8)] ^= 1 << (i % 8)
        try:
            decode_rle(damaged, size)
        except RLEError:
            pass
