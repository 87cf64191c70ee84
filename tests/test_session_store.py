"""Shared click states (SESSION_STORE=redis://..., ml_backend/interactive/session_store.py, model/state_codec.py):
lossless
state blobs of the real predictor, the circuit breaker, keys/TTL/versions in a real Redis, two backend processes
sharing one Redis, and a Redis killed in the middle of a session."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient
from PIL import Image

from ml_backend.app import create_app
from ml_backend.config import Settings
from ml_backend.interactive.engine import Engine
from ml_backend.interactive.session_store import CircuitBreaker, RedisStates, SharedStates
from ml_backend.interactive.sessions import RunStats, Session
from ml_backend.labelstudio.adapter import Backend
from testkit.ls_harness import LABEL_CONFIG, keypoint
from testkit.ls_harness import Backend as BackendProcess
from testkit.standins import DiskPredictor

REPO = Path(__file__).resolve().parents[1]

W, H = 160, 120
# Ten clicks inside the 160x120 test image (positive on the ellipse, negatives around it), in UI order.
CLICKS = [
    (60, 80, True),
    (45, 70, True),
    (75, 95, True),
    (20, 20, False),
    (60, 40, True),
    (100, 140, False),
    (55, 110, True),
    (10, 150, False),
    (70, 60, True),
    (110, 10, False),
]


def ellipse_image(w: int = W, h: int = H) -> np.ndarray:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 70, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    inside = ((xx - w * 0.5) / (w * 0.3)) ** 2 + ((yy - h * 0.5) / (h * 0.35)) ** 2 <= 1
    image[inside] = rng.integers(180, 255, (int(inside.sum()), 3), dtype=np.uint8)
    return image


def predict_body(n: int) -> dict:
    """What the labeling UI sends for the first ``n`` of CLICKS on task 1 (a Local Files image)."""
    result = [keypoint(r, c, p, W, H, i) for i, (r, c, p) in enumerate(CLICKS[:n])]
    return {
        "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=task1.png"}}],
        "project": "1.1",
        "label_config": LABEL_CONFIG,
        "params": {"context": {"result": result}},
    }


def rle_of(reply) -> list[int]:
    return reply.json()["results"][0]["result"][0]["value"]["rle"]


@pytest.fixture()
def files(tmp_path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    Image.fromarray(ellipse_image()).save(folder / "task1.png")
    return folder


def reference_rles(files: Path, n: int) -> list[list[int]]:
    """The masks one process without a shared store gives for clicks 1..n (the single-worker default)."""
    settings = Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": str(files)})
    settings.no_traffic_warning_s = 0
    app = create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="disk"))
    with TestClient(app) as client:
        assert app.state.backend.shared is None  # SESSION_STORE unset: exactly today's in-process cache
        return [rle_of(client.post("/predict", json=predict_body(k))) for k in range(1, n + 1)]


# --- the real predictor's state, bit for bit ------------------------------------------------------------


@pytest.mark.parametrize("size", [(W, H), (480, 360)], ids=["map-stored", "logits-stored"])
def test_adaptiveclick_state_blob_is_lossless_and_refuses_other_settings(size):
    import torch

    from model.checkpoint import load_model
    from model.predictor import Predictor
    from model.state_codec import StateFormatError

    net = load_model(REPO / "weights" / "starter.safetensors", "cpu")
    image = ellipse_image(*size)
    first, second = (Predictor(net, device="cpu", flip=False, refine="guided,clean") for _ in range(2))
    first.set_image(image)
    second.set_image(image)
    for k, (row, col, positive) in enumerate(CLICKS[:4]):
        first.add_click(row, col, positive)
        blob = first.export_state()
        assert len(blob) < first.get_state().prev_probs.numel() * 4  # smaller than the full-resolution map
        restored = second.import_state(blob)
        held = first.get_state()
        assert torch.equal(restored.prev_probs, held.prev_probs) and restored.prev_probs.dtype == torch.float32
        assert restored.roi == held.roi and restored.clicks == held.clicks and len(restored.clicks) == k + 1
        second.set_state(restored)
    # Continuing from the restored state gives exactly the map the first process computes for the next click.
    row, col, positive = CLICKS[4]
    assert second.add_click(row, col, positive).tobytes() == first.add_click(row, col, positive).tobytes()

    other = Predictor(net, device="cpu", flip=True, refine="guided,clean")  # other settings: another state
    other.set_image(image)
    with pytest.raises(StateFormatError, match="other settings"):
        other.import_state(blob)
    smaller = Predictor(net, device="cpu", flip=False, refine="guided,clean")
    smaller.set_image(image[:100, :150])
    with pytest.raises(StateFormatError, match="image"):
        smaller.import_state(blob)
    for broken in (blob[:20], blob[:-100], b"ACST" + bytes(40), blob[:10] + b"\xff" + blob[11:]):
        with pytest.raises(StateFormatError):
            second.import_state(broken)


# --- the circuit breaker ----------------------------------------------------------------------------------


class DeadClient:
    """A Redis client whose every call fails like a refused connection (counts the attempts)."""

    def __init__(self):
        self.calls = 0
        self.up = False

    def get(self, key):
        self.calls += 1
        if not self.up:
            raise ConnectionError("connection refused")
        return None

    def pipeline(self, transaction=False):
        raise AssertionError("not reached in this test")

    def config_get(self, pattern):
        return {"maxmemory": "1048576", "maxmemory-policy": "volatile-lru"}


def test_a_dead_store_is_left_alone_until_the_retry_period_and_logged_once(caplog):
    now = [0.0]
    client = DeadClient()
    store = RedisStates("redis://nowhere:6379/0", ttl_s=60, client=client)
    store.breaker = CircuitBreaker(5.0, "test store", clock=lambda: now[0])
    with caplog.at_level("INFO", logger="adaptiveclick"):
        assert store.get_longest(["a"]) is None and client.calls == 1
        for _ in range(20):  # breaker open: no call, so no timeout per click
            assert store.get_longest(["a"]) is None
        assert client.calls == 1 and store.put_many([("a", b"x")]) is False
        now[0] = 5.5  # retry period over: one trial call, still down
        assert store.get_longest(["a"]) is None and client.calls == 2
        assert store.get_longest(["a"]) is None and client.calls == 2
        now[0] = 11.0
        client.up = True
        assert store.get_longest(["a"]) is None and client.calls == 3 and not store.breaker.down
        assert store.get_longest(["a"]) is None and client.calls == 4  # closed again: every call goes through
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is unavailable" in m for m in messages) == 1  # one outage, one line
    assert sum("reachable again" in m for m in messages) == 1


# --- keys, TTL, versions in a real Redis ------------------------------------------------------------------


def _session(key, predictor=None) -> Session:
    return Session(key, ellipse_image(), predictor or DiskPredictor())


def test_states_in_redis_have_a_ttl_and_are_kept_apart_by_version_and_settings(redis_server):
    shared = SharedStates(RedisStates(redis_server.url, ttl_s=120))
    clicks = tuple(CLICKS[:3])
    writer = _session(("1", 1, "url", 0, "tag2", "Object", "id"))
    stats = RunStats()
    writer.run(clicks, stats)
    shared.publish(writer, clicks, "v1", stats)
    client = redis_server.client()
    keys = client.keys("ac:state:*")
    assert len(keys) == 3 and shared.published == 3  # one entry per click prefix
    assert all(0 < client.pttl(k) <= 120_000 for k in keys)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"

    four = tuple(CLICKS[:4])
    reader = _session(writer.key)
    got = shared.restore(reader, four, "v1", RunStats())
    assert got is not None and got[0] == clicks
    assert np.array_equal(got[1].prev, writer.states[clicks][0].prev) and got[1].clicks == clicks
    assert shared.restore(_session(writer.key), four, "v2", RunStats()) is None  # a hot-swapped model: not reused
    wider = _session(writer.key, DiskPredictor(radius_ratio=0.2))  # other predictor settings
    assert shared.restore(wider, four, "v1", RunStats()) is None
    other_task = _session(("1", 2, "url", 0, "tag2", "Object", "id"))
    assert shared.restore(other_task, four, "v1", RunStats()) is None
    # A shorter stored prefix is found when the longest is missing (the user moved a later click).
    moved = clicks[:2] + ((5, 5, False), (6, 6, True))
    got = shared.restore(_session(writer.key), moved, "v1", RunStats())
    assert got is not None and got[0] == clicks[:2]


def test_settings_and_default_without_a_store(monkeypatch):
    assert Settings.from_env({}).session_store == ""
    assert Settings.from_env({"SESSION_STORE": "local"}).session_store == ""
    assert Settings.from_env({"SESSION_STORE": "redis://r:6379/1"}).session_store == "redis://r:6379/1"
    with pytest.raises(ValueError, match="SESSION_STORE"):
        Settings.from_env({"SESSION_STORE": "memcached://x"})
    settings = Settings.from_env({})
    assert Backend(settings, Engine(settings, factory=DiskPredictor, name="disk")).shared is None


# --- two backend processes, one Redis -------------------------------------------------------------------


def _backend_env(files: Path, redis_url: str) -> dict[str, str]:
    return {
        "MODEL_ENGINE": "testkit.standins:DiskPredictor",
        "SESSION_STORE": redis_url,
        "SESSION_STORE_RETRY_S": "1",
        "LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "NO_TRAFFIC_WARNING_S": "0",
        "FINETUNE": "off",
        "WORKERS": "1",
        "THREADS": "4",
        "LOG_LEVEL": "INFO",
    }


def test_two_backends_share_one_redis_one_forward_per_click_and_a_redis_outage_degrades(redis_server, files, tmp_path):
    reference = reference_rles(files, 10)
    env = _backend_env(files, redis_server.url)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    backends = [BackendProcess(env, log) for log in logs]
    try:
        for backend in backends:
            backend.start()

        def click(n: int):
            reply = requests.post(backends[(n - 1) % 2].url + "/predict", json=predict_body(n), timeout=60)
            assert reply.status_code == 200, reply.text
            assert rle_of(reply) == reference[n - 1], f"click {n}: not the single-process mask"
            return reply

        # Clicks alternate between the two processes: each pays one forward, continuing the other's state.
        for n in range(1, 5):
            reply = click(n)
            assert reply.headers["x-forwards"] == "1", n
            assert ("store" in reply.headers["x-cache"]) == (n > 1), reply.headers["x-cache"]
            assert "store;dur=" in reply.headers["server-timing"]

        redis_server.kill()  # Redis dies mid-session: each process replays what it lacks, no 5xx
        for n in (5, 6):
            reply = click(n)
            assert reply.headers["x-forwards"] == "2" and "store" not in reply.headers["x-cache"], n
        assert all("is unavailable" in log.read_text() for log in logs)

        redis_server.start()  # back (empty): sharing resumes after SESSION_STORE_RETRY_S
        time.sleep(1.5)
        reply = click(7)  # the other process computed click 6 while Redis was down: replayed here
        assert reply.headers["x-forwards"] == "2"
        for n in range(8, 11):
            reply = click(n)
            assert reply.headers["x-forwards"] == "1" and "store" in reply.headers["x-cache"], n
    finally:
        for backend in backends:
            backend.stop()
    for log in logs:
        text = log.read_text()
        assert text.count("is unavailable") == 1 and "reachable again" in text
        assert "Traceback" not in text


def test_real_predictor_behind_two_backends_gives_the_single_process_masks(redis_server, files):
    """The shipped starter model in two Backend instances (two workers' worth of state, one Redis)."""

    def app(store: str):
        settings = Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": str(files), "SESSION_STORE": store, "DEVICE": "cpu"})
        settings.no_traffic_warning_s = 0
        return create_app(settings)

    n = 5
    with TestClient(app("")) as single:
        assert single.app.state.backend.engine.ready.wait(120)
        expected = [rle_of(single.post("/predict", json=predict_body(k))) for k in range(1, n + 1)]
    with TestClient(app(redis_server.url)) as a, TestClient(app(redis_server.url)) as b:
        for client in (a, b):
            assert client.app.state.backend.engine.ready.wait(120) and client.app.state.backend.engine.error is None
        for k in range(1, n + 1):
            reply = (a, b)[(k - 1) % 2].post("/predict", json=predict_body(k))
            assert reply.status_code == 200 and reply.headers["x-forwards"] == "1", (k, reply.text[:300])
            assert rle_of(reply) == expected[k - 1], f"click {k}: the mask differs from one process's"
        assert a.app.state.backend.shared.restored + b.app.state.backend.shared.restored == n - 1


SMART_BOX = '<RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>'


def box_then_click_bodies() -> list[dict]:
    """What the labeling UI sends for a box drawn around the ellipse, then a negative click inside it without the
    box (Label Studio's editor sends the box once)."""
    box = {
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"x": 15.0, "y": 10.0, "width": 70.0, "height": 80.0, "rectanglelabels": ["Object"]},
        "id": "box1",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
    }
    bodies = []
    for result in ([box], [keypoint(60, 100, False, W, H, 1)]):
        body = predict_body(0)
        body["label_config"] = LABEL_CONFIG.replace("</View>", SMART_BOX + "</View>")
        body["params"]["context"]["result"] = result
        bodies.append(body)
    return bodies


def test_a_box_then_a_click_on_another_process_gives_the_single_process_mask(redis_server, files, tmp_path):
    """The remembered box lives in SESSION_STORE: the click after a box may land on a replica that never saw the
    box and still refines the box's object."""
    box_body, click_body = box_then_click_bodies()
    settings = Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": str(files)})
    settings.no_traffic_warning_s = 0
    with TestClient(create_app(settings, engine=Engine(settings, factory=DiskPredictor, name="disk"))) as single:
        boxed = rle_of(single.post("/predict", json=box_body))
        expected = rle_of(single.post("/predict", json=click_body))
    click_alone = Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": str(files)})
    click_alone.no_traffic_warning_s = 0
    with TestClient(create_app(click_alone, engine=Engine(click_alone, factory=DiskPredictor, name="disk"))) as fresh:
        unboxed = rle_of(fresh.post("/predict", json=click_body))
    assert expected != boxed and expected != unboxed  # the click refines the box's mask, not a click-only object

    env = _backend_env(files, redis_server.url)
    backends = [BackendProcess(env, tmp_path / f"{name}.log") for name in ("a", "b")]
    try:
        for backend in backends:
            backend.start()
        reply = requests.post(backends[0].url + "/predict", json=box_body, timeout=60)
        assert reply.status_code == 200 and rle_of(reply) == boxed, reply.text[:300]
        reply = requests.post(backends[1].url + "/predict", json=click_body, timeout=60)
        assert reply.status_code == 200, reply.text[:300]
        assert rle_of(reply) == expected, "the click on the other process did not continue the box's object"
        assert any(key.startswith(b"ac:box:") for key in redis_server.client().keys("ac:box:*"))
        assert 0 < redis_server.client().pttl(redis_server.client().keys("ac:box:*")[0]) <= 1800 * 1000
    finally:
        for backend in backends:
            backend.stop()
