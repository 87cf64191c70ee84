"""Fast unit tests of the ML backend's pieces: labeling config, clicks, frames, RLE, sessions and the cache."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image

from ml_backend.errors import BadRequest, ConfigError, MediaError
from ml_backend.interactive.sessions import RunStats, Session, SessionCache
from ml_backend.labelstudio.adapter import clicks_to_pixels, encode_mask, make_frame
from ml_backend.labelstudio.labeling_config import OutputTag, extract_clicks, parse_label_config
from ml_backend.masks.rle import mask2rle as fast_mask2rle
from ml_backend.media.fetcher import decode_image
from testkit.standins import DiskPredictor

CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/><Label value="Other"/></BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>"""


def kp(x, y, positive=True, label="Object", w=640, h=480, rotation=0, **extra):
    region = {
        "original_width": w,
        "original_height": h,
        "image_rotation": rotation,
        "value": {"x": x, "y": y, "width": 0.3, "keypointlabels": [label]},
        "id": f"kp{x}-{y}",
        "from_name": "tag2",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }
    if positive is not None:
        region["is_positive"] = positive
    region.update(extra)
    return region


# --- labeling config and clicks ----------------------------------------------------------------


def test_parse_label_config_finds_tags():
    cfg = parse_label_config(CONFIG)
    assert set(cfg.images) == {"image"} and cfg.images["image"].data_key == "image"
    assert cfg.keypoints["tag2"].smart and cfg.keypoints["tag2"].labels == ("Object",)
    assert cfg.output_for("image", "Object") == OutputTag("brush", "tag", "Object")
    assert cfg.problems() == []


def test_config_without_matching_brush_label_explains_the_fix():
    cfg = parse_label_config(CONFIG.replace('<Label value="Object"/><Label value="Other"/>', '<Label value="Car"/>'))
    with pytest.raises(ConfigError, match='add <Label value="Object"/> to the BrushLabels'):
        cfg.output_for("image", "Object")
    assert any("Object" in p for p in cfg.problems())
    no_brush = parse_label_config(CONFIG.replace("BrushLabels", "RectangleLabels"))
    with pytest.raises(ConfigError, match="no <BrushLabels"):
        no_brush.output_for("image", "Object")


def test_the_answer_follows_the_clicked_labels_output_tag():
    polygon_only = parse_label_config(CONFIG.replace("BrushLabels", "PolygonLabels"))
    assert polygon_only.output_for("image", "Object") == OutputTag("polygon", "tag", "Object")
    assert polygon_only.problems() == []
    poly = '<PolygonLabels name="poly" toName="image"><Label value="object"/></PolygonLabels>'
    both = parse_label_config(CONFIG.replace("</View>", poly + "</View>"))
    assert both.output_for("image", "Object") == OutputTag("brush", "tag", "Object")  # OUTPUT_SHAPE's default
    assert both.output_for("image", "Object", prefer="polygon") == OutputTag("polygon", "poly", "object")
    # only the brush tag has "Other"
    assert both.output_for("image", "Other", prefer="polygon") == OutputTag("brush", "tag", "Other")


def test_invalid_label_config_is_a_bad_request():
    with pytest.raises(BadRequest):
        parse_label_config("<View><Image")


def test_extract_clicks_keeps_order_defaults_positive_and_skips_other_regions():
    rect = {
        "type": "rectanglelabels",
        "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["Object"]},
    }
    clicks = extract_clicks([kp(10, 20, None), rect, kp(30, 40, False), kp(50, 60, True)], parse_label_config(CONFIG))
    assert [(c.x, c.y, c.positive) for c in clicks.clicks] == [(10, 20, True), (30, 40, False), (50, 60, True)]
    assert (clicks.label, clicks.from_name, clicks.to_name) == ("Object", "tag2", "image")
    assert (clicks.original_width, clicks.original_height, clicks.image_rotation) == (640, 480, 0)
    assert extract_clicks([], parse_label_config(CONFIG)) is None
    assert extract_clicks([rect], parse_label_config(CONFIG)) is None


@pytest.mark.parametrize(
    "bad",
    [
        "nope",
        [1],
        [{"value": 3, "type": "keypointlabels"}],
        [kp("a", 1)],
        [kp(float("nan"), 1)],
        [{**kp(1, 1), "original_width": "wide"}],
        [{**kp(1, 1), "value": {"x": 1, "y": 2, "keypointlabels": "Object"}}],
    ],
)
def test_extract_clicks_rejects_wrong_types(bad):
    with pytest.raises(BadRequest):
        extract_clicks(bad, parse_label_config(CONFIG))


def test_is_positive_strings_and_numbers():
    clicks = extract_clicks([kp(1, 1, "false"), kp(2, 2, 0), kp(3, 3, "true"), kp(4, 4, 1)], parse_label_config(CONFIG))
    assert [c.positive for c in clicks.clicks] == [False, False, True, True]


def test_polarity_from_value_positive_as_the_enterprise_backend_reads_it():
    def region(x, polarity):
        r = kp(x, x, None)
        r.pop("is_positive", None)
        if polarity is not None:
            r["value"]["positive"] = polarity
        return r

    both = kp(5, 5, True)
    both["value"]["positive"] = False  # the editor's own key wins when both are there
    config = parse_label_config(CONFIG)
    clicks = extract_clicks([region(1, False), region(2, True), region(3, None), region(4, "false"), both], config)
    assert [c.positive for c in clicks.clicks] == [False, True, True, False, True]


# --- frames: size, rotation, EXIF ----------------------------------------------------------------


def _decoded(h=480, w=640, orientation=1):
    from ml_backend.media.fetcher import DecodedImage

    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, :, 0] = np.arange(w, dtype=np.uint16)[None, :] % 256  # column ramp, to see transforms
    raw = (w, h) if orientation in (1, 2, 3, 4) else (h, w)
    return DecodedImage(arr, raw, orientation, 0)


def test_percent_to_pixels_clamps_dedupes_and_keeps_order():
    cfg = parse_label_config(CONFIG)
    clickset = extract_clicks([kp(50, 50), kp(0, 0, False), kp(100, 100), kp(50, 50), kp(50.01, 50.05)], cfg)
    frame = make_frame(_decoded(), 640, 480, 0)
    assert clicks_to_pixels(clickset, frame) == ((240, 320, True), (0, 0, False), (479, 639, True))


def test_rotated_frame_when_ui_reports_swapped_size():
    decoded = _decoded()
    frame = make_frame(decoded, 480, 640, 90)  # an older UI: natural size after a 90 degree rotation
    assert frame.key == "rot90" and frame.image().shape == (640, 480, 3) and frame.out_size == (480, 640)
    assert frame.size == (480, 640)
    # Rotating clockwise puts the image's left column (x=0) at the top row.
    assert np.array_equal(frame.image()[0, :, 0], decoded.array[::-1, 0, 0])
    assert make_frame(decoded, 640, 480, 90).key == "id"  # LS 1.23: rotation is a view transform only


def test_exif_orientation_is_applied_and_raw_frame_recognised():
    raw = np.zeros((40, 60, 3), np.uint8)
    raw[:, :10] = 255  # a white band on the left of the stored pixels
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(raw).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(buf.getvalue(), 10**7)
    assert decoded.orientation == 6 and decoded.size == (40, 60) and decoded.raw_size == (60, 40)
    assert decoded.array[:10, :, :].mean() > 200  # the band is on top, as the browser shows it
    assert make_frame(decoded, 40, 60, 0).key == "id"
    raw_frame = make_frame(decoded, 60, 40, 0)  # a browser that ignores EXIF
    assert raw_frame.key == "raw" and raw_frame.image().shape == (40, 60, 3) and raw_frame.size == (60, 40)
    assert raw_frame.image()[:, :10].mean() > 200


def test_size_mismatch_rescales_the_mask_and_says_so():
    decoded = _decoded(100, 200)
    frame = make_frame(decoded, 400, 200, 0)
    assert "rescaled" in frame.note
    assert frame.out_size == (400, 200) and frame.image().shape[:2] == (100, 200)
    assert make_frame(decoded, 10**5, 10**5, 0, max_pixels=10**6).out_size == (200, 100)  # absurd sizes ignored
    mask = np.zeros((100, 200), bool)
    mask[:50, :100] = True
    out = decode_rle(encode_mask(mask, frame.out_size)).reshape(200, 400, 4)[..., 3]
    assert out.shape == (200, 400) and out[:100, :200].min() == 255 and out[100:].max() == 0


def test_decompression_bomb_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buf, format="PNG")
    with pytest.raises(MediaError) as err:
        decode_image(buf.getvalue(), max_pixels=50_000)
    assert err.value.status == 413 and "MP" in err.value.message
    with pytest.raises(MediaError):
        decode_image(b"not an image", 10**7)


def test_grayscale_and_16bit_images_decode_to_rgb():
    for img in (Image.new("L", (8, 6), 7), Image.fromarray(np.full((6, 8), 60000, np.uint16))):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        arr = decode_image(buf.getvalue(), 10**7).array
        assert arr.shape == (6, 8, 3) and arr.dtype == np.uint8


# --- RLE -------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.sampled_from(["random", "blobs", "grey"]))
def test_fast_rle_is_byte_identical_to_the_sdk(h, w, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "random":
        mask = (rng.random((h, w)) > rng.random()).astype(np.uint8) * 255
    elif kind == "blobs":
        mask = np.zeros((h, w), np.uint8)
        mask[rng.integers(0, h) :, rng.integers(0, w) :] = 255
    else:
        mask = rng.integers(0, 256, (h, w), dtype=np.uint8)
    assert fast_mask2rle(mask) == mask2rle(mask)


@pytest.mark.parametrize("shape", [(1, 16384), (1, 16385), (1, 16449), (3, 40000), (1224, 1632)])
def test_fast_rle_long_runs(shape):
    mask = np.zeros(shape, np.uint8)
    assert fast_mask2rle(mask) == mask2rle(mask)
    mask[:, shape[1] // 3 :] = 255
    assert fast_mask2rle(mask) == mask2rle(mask)


def test_encode_mask_matches_sdk_and_round_trips():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    rle = encode_mask(mask, (53, 37))
    assert rle.tolist() == mask2rle(mask.astype(np.uint8) * 255)
    alpha = decode_rle(rle).reshape(37, 53, 4)[..., 3]
    assert np.array_equal(alpha, mask.astype(np.uint8) * 255)


# --- sessions: prefix cache ---------------------------------------------------------------------


def _session(predictor=None, shape=(60, 80)):
    return Session("k", np.zeros((*shape, 3), np.uint8), predictor or DiskPredictor())


def _fresh(clicks, shape=(60, 80)):
    p = DiskPredictor()
    p.set_image(np.zeros((*shape, 3), np.uint8))
    prob = None
    for r, c, pos in clicks:
        prob = p.add_click(r, c, pos)
    return prob > 0.5


def test_extending_a_prefix_costs_one_forward_and_matches_a_replay():
    s = _session()
    a, b, c = (30, 40, True), (10, 10, False), (50, 70, True)
    for clicks, expected_forwards, expected_prefix in [
        ((a,), 1, 0),
        ((a, b), 1, 1),
        ((a, b, c), 1, 2),
        ((a, c), 1, 1),  # the user removed b
        ((a, b), 1, 1),  # result not cached by the session itself: one forward from prefix (a,)
        ((a, (12, 12, False), c), 2, 1),  # moved b
    ]:
        stats = RunStats()
        mask, _ = s.run(clicks, stats)
        assert (stats.forwards, stats.restored_prefix) == (expected_forwards, expected_prefix), clicks
        assert np.array_equal(mask, _fresh(clicks)), clicks


class StatelessDisk:
    """A predictor without get_state/set_state (like the GrabCut baseline)."""

    def __init__(self):
        self.inner = DiskPredictor()
        self.threshold = self.inner.threshold
        self.set_image, self.reset, self.add_click = self.inner.set_image, self.inner.reset, self.inner.add_click
        self.prediction = self.inner.prediction


def test_stateless_predictor_replays_only_what_it_must():
    s = _session(StatelessDisk())
    a, b, c = (30, 40, True), (10, 10, False), (50, 70, True)
    runs = [((a,), 1), ((a, b), 1), ((a, b, c), 1), ((a, c), 2), ((a, c, b), 1)]
    for clicks, forwards in runs:
        stats = RunStats()
        mask, _ = s.run(clicks, stats)
        assert stats.forwards == forwards, clicks
        assert np.array_equal(mask, _fresh(clicks))


def test_remembered_results_answer_repeats_without_the_model():
    s = _session()
    mask, score = s.run(((30, 40, True),), RunStats())
    rle = encode_mask(mask, (80, 60))
    s.remember_result(((30, 40, True),), rle, score)
    hit = s.cached_result(((30, 40, True),))
    assert hit is not None and np.array_equal(hit.encoded, rle) and hit.score == pytest.approx(0.9)
    assert s.cached_result(((30, 41, True),)) is None


def test_cache_evicts_least_recently_used_under_the_byte_budget_and_ttl(monkeypatch):
    cache = SessionCache(max_bytes=3000, ttl_s=100)
    for i in range(5):
        cache.put_image(("image", i), object(), 1000)
    assert cache.stats()["images"] == 3 and cache.get_image(("image", 0)) is None
    assert cache.get_image(("image", 4)) is not None
    cache.put_image(("image", 9), object(), 10)
    import ml_backend.interactive.sessions as sessions

    now = sessions.time.monotonic()
    monkeypatch.setattr(sessions.time, "monotonic", lambda: now + 1000)
    assert cache.get_image(("image", 9)) is None  # expired
    cache.trim()
    assert cache.stats()["images"] == 0


def test_session_memory_is_accounted():
    s = _session(shape=(100, 100))
    before = s.nbytes
    s.run(((50, 50, True), (10, 10, False)), RunStats())
    assert s.nbytes >= before + 2 * 100 * 100 * 4  # two float32 snapshots
    cache = SessionCache(max_bytes=1, ttl_s=100)
    cache.get_or_create_session("a", lambda: s)
    cache.trim(keep="a")  # the active session stays, but sheds all snapshots but the newest
    assert cache.get_session("a") is s and len(s.states) == 1
    assert s.nbytes == s.base_bytes + 100 * 100 * 4
    cache.trim(keep="b")
    assert cache.get_session("a") is None
