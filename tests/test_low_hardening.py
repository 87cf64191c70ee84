"""The low-severity findings of issue 37: half-set basic auth refuses to start, 4xx texts carry no reprs or echoed
numbers, polygon answers have a bounded number of parts, and websocket scopes are refused by the middleware."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ml_backend.config import Settings
from ml_backend.masks.polygons import MAX_POLYGON_PARTS, polygon_regions

from backend_helpers import make_app, recorded


@pytest.mark.parametrize("env", [{"BASIC_AUTH_USER": "ls"}, {"BASIC_AUTH_PASS": "secret"}])
def test_half_set_basic_auth_refuses_to_start(env, monkeypatch, capsys):
    from cli import main

    with pytest.raises(ValueError, match="set both"):
        Settings.from_env(env)
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--port", "9"]) == 2  # refused before anything listens
    assert "set both" in capsys.readouterr().err
    with pytest.raises(ValueError, match="set both"):  # an app built from settings made in code, too
        make_app(basic_auth_user=env.get("BASIC_AUTH_USER", ""), basic_auth_pass=env.get("BASIC_AUTH_PASS", ""))


def test_websocket_scopes_are_refused_with_and_without_auth():
    for overrides in ({}, {"basic_auth_user": "u", "basic_auth_pass": "p"}):
        with TestClient(make_app(**overrides)) as client:
            with pytest.raises(WebSocketDisconnect) as closed:
                with client.websocket_connect("/predict") as ws:
                    ws.receive_text()
            assert closed.value.code == 1008
            assert client.get("/health").status_code == 200  # plain HTTP is unaffected


def test_4xx_texts_name_the_problem_without_reprs_or_echoed_numbers():
    body = recorded("predict_interactive_1click")
    body["tasks"][0]["annotations"] = [{"id": 1, "result": [{"type": "brushlabels"}]}]
    cases = [
        ("/predict", '{"tasks": [{"id": 1, "data": {}}], "x": ' + "7" * 300 + "}"),
        ("/predict", '{"tasks": [{"id": 1e400, "data": {}}]}'),
        ("/setup", '{"schema": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("/api/function_invocations", '{"image": "' + "A" * 40 + '", "pos_points": [[1, 1]]}'),
    ]
    with TestClient(make_app(), raise_server_exceptions=False) as client:
        for path, text in cases:
            headers = {"content-type": "application/json", "x-nuclio-function-name": "pth-adaptiveclick"}
            reply = client.post(path, content=text, headers=headers)
            assert 400 <= reply.status_code < 500, (path, reply.status_code, reply.text[:200])
            message = reply.json()["error"]
            assert "0x" not in message and " object at " not in message and "7" * 30 not in message, message
            assert len(message) < 300, message


def test_a_polygon_answer_of_a_fragmented_mask_is_capped_and_says_so(caplog):
    mask = np.zeros((600, 600), bool)
    for dy in range(4):
        for dx in range(4):
            mask[dy::6, dx::6] = True  # 10 000 separate 4x4 squares
    regions = polygon_regions(
        mask=mask, from_name="p", to_name="i", label="L", rotation=0, score=1.0, tolerance_px=0.75, min_area_px=16
    )
    assert len(regions) == MAX_POLYGON_PARTS
    assert "MAX_POLYGON_PARTS" in caplog.text
