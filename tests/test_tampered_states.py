"""Click states read back from a shared Redis are untrusted (model/state_codec.py, SESSION_STORE): a tampered blob
(a 1e400 in the header, JSON nested past the parser's depth, NaN logits, clicks off the image) is a cache miss,
never an exception of the click that reads it (issue 37, item 8)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from model import state_codec
from model.state_codec import StateFormatError, StateParts

REPO = Path(__file__).resolve().parents[1]
_HEAD = struct.Struct("<4sBI")


def _split(blob: bytes) -> tuple[dict, bytes]:
    _, _, head_len = _HEAD.unpack_from(blob)
    return json.loads(blob[_HEAD.size : _HEAD.size + head_len]), blob[_HEAD.size + head_len :]


def _join(header: dict | bytes, payload: bytes) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return _HEAD.pack(b"ACST", 1, len(head)) + head + payload


@pytest.fixture(scope="module")
def predictor_and_blob():
    from model.checkpoint import load_model
    from model.predictor import Predictor

    net = load_model(REPO / "weights" / "starter.safetensors", "cpu")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)  # larger than the input: logits are stored
    predictor = Predictor(net, device="cpu", flip=False)
    predictor.set_image(image)
    predictor.add_click(180, 240, True)
    predictor.image_np = image  # for the sessions built below
    return predictor, predictor.export_state()


def _tampered(blob: bytes) -> dict[str, bytes]:
    header, payload = _split(blob)
    tag = header["tag"]
    out = {}
    for field, value in (("roi", [0, 1e400, 0, 10]), ("shape", [1, 1, 1e400, 2]), ("clicks", [[1e400, 3, True]])):
        text = json.dumps(dict(header, **{field: "@"})).replace('"@"', json.dumps(value).replace("Infinity", "1e400"))
        out[f"1e400 in {field}"] = _join(text.encode(), payload)
    out["deep JSON header"] = _join(b"[" * 200_000 + b"]" * 200_000, payload)
    out["deep JSON in a field"] = _join(
        json.dumps(dict(header, roi="@")).replace('"@"', "[" * 100_000 + "]" * 100_000).encode(), payload
    )
    out["clicks off the image"] = _join(dict(header, clicks=[[10**6, 5, True]]), payload)
    shape = tuple(header["shape"])
    for name, fill in (("NaN logits", np.nan), ("inf logits", np.inf)):
        parts = StateParts(((180, 240, True),), tuple(header["roi"]), tuple(header["image_hw"]), np.full(shape, fill))
        out[name] = state_codec.encode(parts, tag)
    return out


def test_every_tampered_state_is_a_format_error(predictor_and_blob):
    predictor, blob = predictor_and_blob
    predictor.import_state(blob)  # the untouched blob is read back
    for name, bad in _tampered(blob).items():
        with pytest.raises(StateFormatError):
            predictor.import_state(bad)
            pytest.fail(f"{name} was accepted")


class _OneBlobStore:
    """The shared store's read side, answering every lookup with one (tampered) blob."""

    def __init__(self, blob: bytes):
        self.blob = blob

    def get_longest(self, keys):
        return 0, self.blob

    def get(self, key):  # the remembered box of an object
        return True, ("[" + "9" * 400 + ", 1, 2, 3]").encode()

    def recent(self, key):
        return [b"[" * 100_000 + b"]" * 100_000, b"[[1e400, 2, true]]", json.dumps([[10**30, 2, True]]).encode()]


def test_a_tampered_state_in_the_store_is_a_miss_for_the_click(predictor_and_blob):
    from ml_backend.interactive.session_store import SharedStates
    from ml_backend.interactive.sessions import RunStats, Session

    predictor, blob = predictor_and_blob
    for name, bad in _tampered(blob).items():
        shared = SharedStates(_OneBlobStore(bad))
        session = Session(("p", 1, name), predictor.image_np, predictor)
        clicks = ((180, 240, True), (100, 100, False), (200, 300, True))
        assert shared.restore(session, clicks, "v1", RunStats()) is None, name
        # The remembered click orders are read the same way: the unreadable ones are left out, none raises.
        assert shared.known_sequences(session, "v1") == [((10**30, 2, True),)]
        assert shared.recall_box(("p", 1, name)) == (True, None)  # a box of a 400-digit number is no box
