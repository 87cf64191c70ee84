"""End to end against a real Label Studio 1.23.2: project with smart KeyPointLabels + BrushLabels, an uploaded and a
local-files image, the backend connected through ``POST /api/ml`` (interactive, basic auth), smart clicks through
``POST /api/ml/{id}/interactive-annotating``, versions, webhooks and training.

The backend runs as ``adaptiveclick serve`` (gunicorn + uvicorn worker) with a personal access token, reading local
files from the shared document root; a second, in-process backend uses the legacy token and fetches local files
through Label Studio.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from testkit.ls_harness import E2E_IMAGES, LS_LEGACY_TOKEN, Backend, InProcessBackend, basic_auth_header, keypoint
from testkit.standins import SEGMENTATION_ENGINE  # the starter model

pytestmark = pytest.mark.slow

USER, PASSWORD = "ls", "backend-secret"


@pytest.fixture(scope="module")
def stack(label_studio, e2e_root, tmp_path_factory):
    """Project + tasks + the backend (subprocess) connected with basic auth."""
    client = label_studio.client()
    pat = label_studio.personal_access_token()
    backend = Backend(
        {
            "MODEL_ENGINE": SEGMENTATION_ENGINE,
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": pat,
            "LOCAL_FILES_DOCUMENT_ROOT": str(e2e_root),
            "BASIC_AUTH_USER": USER,
            "BASIC_AUTH_PASS": PASSWORD,
            "LOG_LEVEL": "DEBUG",
            "WORKERS": "1",
            "THREADS": "4",
            "NO_TRAFFIC_WARNING_S": "0",
        },
        tmp_path_factory.mktemp("backend") / "backend.log",
    ).start()
    try:
        project = client.create_project()
        client.upload(project, e2e_root / "images" / E2E_IMAGES["upload"])
        client.add_local_storage(project, e2e_root / "images")
        client.import_tasks(project, [{"data": {"image": f"/data/local-files/?d=images/{E2E_IMAGES['local']}"}}])
        tasks = client.tasks(project)
        by_kind = {
            "upload": next(t for t in tasks if t["data"]["image"].startswith("/data/upload/")),
            "local": next(t for t in tasks if t["data"]["image"].startswith("/data/local-files/")),
        }
        ml = client.connect_backend(project, backend.url, USER, PASSWORD)
        yield {
            "client": client,
            "project": project,
            "tasks": by_kind,
            "ml": ml,
            "backend": backend,
            "ls": label_studio,
            "root": e2e_root,
        }
    finally:
        backend.stop()


def _interior(region: np.ndarray) -> tuple[int, int]:
    """The pixel of ``region`` farthest from its border (what an annotator would click)."""
    dist = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(row), int(col)


def _decode(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3]


def test_backend_is_connected_with_basic_auth_and_reports_its_version(stack):
    ml, client = stack["ml"], stack["client"]
    assert ml["readable_state"] == "Connected" and ml["is_interactive"] and ml["auth_method"] == "BASIC_AUTH"
    deadline = time.monotonic() + 120  # the model loads in the background after the server starts
    while True:
        health = requests.get(stack["backend"].url + "/health", timeout=5).json()
        if health["model_loaded"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health["model_loaded"], health
    assert ml["model_version"] == health["model_version"]
    versions = client.call("GET", f"/api/ml/{ml['id']}/versions")
    assert versions["versions"] == [health["model_version"]]


def test_wrong_basic_auth_is_refused(stack):
    reply = stack["client"].s.post(
        stack["client"].url + "/api/ml",
        timeout=60,
        json={
            "project": stack["project"],
            "url": stack["backend"].url,
            "title": "wrong",
            "is_interactive": True,
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": USER,
            "basic_auth_pass": "wrong",
        },
    )
    assert reply.status_code >= 400 or reply.json().get("readable_state") != "Connected"


@pytest.mark.parametrize("kind", ["upload", "local"])
def test_smart_clicks_become_brush_masks(stack, shared_dir, kind):
    """1, 2 and 3 clicks (+, -, +) chosen like an annotator would from the ground truth: each positive click lies
    inside the returned mask, each negative one outside, and every click changes the mask."""
    client, ml, task = stack["client"], stack["ml"], stack["tasks"][kind]
    name = E2E_IMAGES[kind]
    gt = np.asarray(Image.open(shared_dir / "datasets" / "GrabCut" / "masks" / (name.rsplit(".", 1)[0] + ".png")))
    height, width = gt.shape
    obj, bg = gt == 1, gt == 0
    points: list[tuple[int, int, bool]] = [(*_interior(obj), True)]
    masks = []
    for n in (1, 2, 3):
        regions = [keypoint(r, c, pos, width, height, i) for i, (r, c, pos) in enumerate(points)]
        t0 = time.perf_counter()
        reply = client.interactive(ml["id"], task["id"], regions)
        elapsed = time.perf_counter() - t0
        assert "errors" not in reply, reply
        [region] = reply["data"]["result"]
        assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
        assert region["value"]["brushlabels"] == ["Object"]
        assert reply["data"]["model_version"] == stack["ml"]["model_version"] and 0 <= reply["data"]["score"] <= 1
        mask = _decode(region)
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        for r, c, positive in points:
            assert mask[r, c] == (255 if positive else 0), (kind, n, r, c, positive)
        if masks:
            assert not np.array_equal(mask, masks[-1]), f"click {n} did not change the mask"
        masks.append(mask)
        assert elapsed < 30
        predicted = mask > 0
        if n == 1:  # a negative click where the mask spills onto the background (else any background pixel)
            spill = predicted & bg
            points.append((*_interior(spill if spill.any() else bg & ~predicted), False))
        elif n == 2:  # a positive click on the part of the object still missed
            missed = obj & ~predicted
            points.append((*_interior(missed if missed.any() else obj), True))


def test_removing_a_click_answers_from_the_session_cache(stack):
    client, ml, task = stack["client"], stack["ml"], stack["tasks"]["upload"]
    height, width = 321, 481
    first = [keypoint(160, 250, True, width, height, 0)]
    two = first + [keypoint(20, 20, False, width, height, 1)]
    a = _decode(client.interactive(ml["id"], task["id"], first)["data"]["result"][0])
    client.interactive(ml["id"], task["id"], two)
    t0 = time.perf_counter()
    b = _decode(client.interactive(ml["id"], task["id"], first)["data"]["result"][0])
    assert np.array_equal(a, b)
    assert time.perf_counter() - t0 < 5


def test_task_open_and_retrieve_predictions_answer_empty(stack):
    client = stack["client"]
    reply = client.call(
        "POST",
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": stack["project"]},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert "predictions" in str(reply).lower()


def _wait_for_log(backend, text: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in backend.log.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def test_webhooks_with_basic_auth_and_start_training(stack):
    client, backend = stack["client"], stack["backend"]
    hooks = [
        h
        for h in client.call("GET", "/api/webhooks", params={"project": stack["project"]})
        if h["url"].startswith(backend.url)
    ]
    assert hooks, "Label Studio creates a webhook for the ML backend"
    # The auto-created webhook carries no credentials; add them as the README says.
    client.call(
        "PATCH",
        f"/api/webhooks/{hooks[0]['id']}",
        json={"headers": {"Authorization": basic_auth_header(USER, PASSWORD)}},
    )
    task = stack["tasks"]["upload"]
    client.call("POST", f"/api/tasks/{task['id']}/annotations", json={"result": [], "task": task["id"]})
    assert _wait_for_log(backend, "webhook ANNOTATION_CREATED")
    client.call("POST", f"/api/ml/{stack['ml']['id']}/train", expect=(200, 201))
    assert _wait_for_log(backend, "webhook START_TRAINING")


def test_legacy_token_and_local_files_through_label_studio(stack):
    """A second backend (in-process): legacy token, no document root, so local files come through LS."""
    from ml_backend.app import create_app
    from ml_backend.config import Settings

    settings = Settings.from_env({})
    settings.model_engine = SEGMENTATION_ENGINE
    settings.label_studio_url = stack["ls"].url
    settings.label_studio_api_key = LS_LEGACY_TOKEN
    settings.no_traffic_warning_s = 0
    app = create_app(settings)
    server = InProcessBackend(app).start()
    try:
        client = stack["client"]
        ml = client.connect_backend(stack["project"], server.url)
        assert ml["readable_state"] == "Connected"
        task = stack["tasks"]["local"]
        h, w = 371, 513
        reply = client.interactive(ml["id"], task["id"], [keypoint(h // 2, w // 2, True, w, h)])
        mask = _decode(reply["data"]["result"][0])
        assert mask.shape == (h, w) and mask[h // 2, w // 2] == 255
        assert app.state.backend.fetcher.auth.kind == "legacy"
        assert app.state.backend.predictions >= 1
    finally:
        server.stop()


POLYGON_AND_BOX_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <PolygonLabels name="poly" toName="image"><Label value="Object"/></PolygonLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object" smart="true"/></RectangleLabels>
</View>"""


def test_polygon_project_answers_clicks_and_a_box_with_polygons_label_studio_stores_and_exports(stack, shared_dir):
    """Through Label Studio's own interactive endpoint: a click in a PolygonLabels project comes back as polygons, a
    smart box as the first prompt too (then a click refines that object), and the answer saved as an annotation is
    stored as it is and holds the polygon in Label Studio's JSON export."""
    from ml_backend.masks.polygons import polygons_to_mask

    client, root = stack["client"], stack["root"]
    name = E2E_IMAGES["upload"]
    gt = np.asarray(Image.open(shared_dir / "datasets" / "GrabCut" / "masks" / (name.rsplit(".", 1)[0] + ".png")))
    obj = gt == 1
    height, width = obj.shape
    project = client.create_project(title="polygons and boxes", config=POLYGON_AND_BOX_CONFIG)
    client.upload(project, root / "images" / name)
    [task] = client.tasks(project)
    ml = client.connect_backend(project, stack["backend"].url, USER, PASSWORD)

    def polygons_mask(reply: dict) -> np.ndarray:
        assert "errors" not in reply, reply
        regions = reply["data"]["result"]
        assert regions and all(r["type"] == "polygonlabels" and r["value"]["closed"] for r in regions)
        points = [np.array(r["value"]["points"]) / 100 * [width, height] for r in regions]
        return polygons_to_mask(points, height, width)

    row, col = _interior(obj)
    clicked = polygons_mask(client.interactive(ml["id"], task["id"], [keypoint(row, col, True, width, height)]))
    assert clicked[row, col]

    rows, cols = np.nonzero(obj)
    box = {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": cols.min() / width * 100,
            "y": rows.min() / height * 100,
            "width": (cols.max() + 1 - cols.min()) / width * 100,
            "height": (rows.max() + 1 - rows.min()) / height * 100,
            "rotation": 0,
            "rectanglelabels": ["Object"],
        },
        "id": "box1",
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }
    boxed_reply = client.interactive(ml["id"], task["id"], [box])
    boxed = polygons_mask(boxed_reply)
    assert (boxed & obj).sum() / (boxed | obj).sum() > 0.5  # the box alone finds the object
    assert not boxed[: rows.min()].any() and not boxed[:, cols.max() + 1 :].any()
    # A negative click on what the box's mask spilled onto (or the background), sent without the box.
    spill = boxed & ~obj
    inside = np.zeros_like(obj)
    inside[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    r, c = _interior(spill if spill.any() else inside & ~obj)
    refined = polygons_mask(client.interactive(ml["id"], task["id"], [keypoint(r, c, False, width, height)]))
    assert not refined[r, c] and (refined & ~boxed).sum() <= 0.05 * boxed.sum()

    client.call("POST", f"/api/tasks/{task['id']}/annotations/", json={"result": boxed_reply["data"]["result"]})
    [annotation] = client.call("GET", f"/api/tasks/{task['id']}/annotations/")
    assert [r["value"]["points"] for r in annotation["result"]] == [
        r["value"]["points"] for r in boxed_reply["data"]["result"]
    ]
    exported = client.call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON"})
    assert exported[0]["annotations"][0]["result"][0]["type"] == "polygonlabels"


def _new_local_task(stack) -> dict:
    """A task of its own (the local-files llama), so the annotation a test saves never reaches the others' tasks."""
    client, project = stack["client"], stack["project"]
    before = {t["id"] for t in client.tasks(project)}
    client.import_tasks(project, [{"data": {"image": f"/data/local-files/?d=images/{E2E_IMAGES['local']}"}}])
    return next(t for t in client.tasks(project) if t["id"] not in before)


def test_a_click_inside_a_submitted_region_continues_it_under_the_same_id(stack, shared_dir):
    """Issue 27 item 5 through Label Studio: the answer to a click, saved as an annotation, is in the task that
    Label Studio sends with the next click; a negative click inside that region continues its mask (a smaller
    region, the click outside it) and keeps its id, which makes the editor replace the region on accepting."""
    client, ml = stack["client"], stack["ml"]
    task = _new_local_task(stack)
    gt = np.asarray(Image.open(shared_dir / "datasets" / "GrabCut" / "masks" / "llama.png")) == 1
    height, width = gt.shape
    first = client.interactive(ml["id"], task["id"], [keypoint(*_interior(gt), True, width, height, 0)])
    [region] = first["data"]["result"]
    saved = _decode(region) > 0
    client.call("POST", f"/api/tasks/{task['id']}/annotations/", json={"result": [region]})
    row, col = _interior(saved & ~gt if (saved & ~gt).sum() > 50 else saved)  # where the mask spills, if it does
    reply = client.interactive(ml["id"], task["id"], [keypoint(row, col, False, width, height, 1)])
    [answer] = reply["data"]["result"]
    continued = _decode(answer) > 0
    assert answer["id"] == region["id"] and not continued[row, col]
    assert (continued & saved).sum() / (continued | saved).sum() > 0.5  # the same object, corrected


# Clicks 50 ms apart: closer than one forward takes, so that the burst queues up whatever the machine's speed (0.2 s
# let every forward finish before the next click on an idle machine). Label Studio forwards each request from its own
# thread, so they may reach the backend in another order (docs/labeling_ui.md): the test follows the arrival order.
SPACING_S = 0.05


def test_a_burst_of_clicks_through_label_studio_spends_no_forward_on_overtaken_requests(stack, shared_dir):
    """Issue 27's "no work for superseded clicks" through the real Label Studio: the requests an annotator clicking
    faster than the model makes (each carrying all the clicks so far) are posted at once to Label Studio's own
    interactive endpoint; the backend, behind a recording proxy, answers the overtaken ones without a forward and
    spends at most one forward per click (BURST_CLICKS=exact, the default: the newest runs each new click)."""
    import concurrent.futures

    from testkit.ls_harness import RecordingProxy

    client = stack["client"]
    task = _new_local_task(stack)
    gt = np.asarray(Image.open(shared_dir / "datasets" / "GrabCut" / "masks" / "llama.png")) == 1
    height, width = gt.shape
    row, col = _interior(gt)
    points = [(row, col, True), (row + 60, col, True), (row - 50, col + 40, True), (20, 20, False), (30, 480, False)]
    clicks = [keypoint(r, c, pos, width, height, i) for i, (r, c, pos) in enumerate(points)]
    proxy = RecordingProxy(stack["backend"].url).start()
    try:
        ml = client.connect_backend(stack["project"], proxy.url, USER, PASSWORD)
        # The image first, so the burst measures clicks, not the download.
        client.interactive(ml["id"], task["id"], clicks[:1])
        with concurrent.futures.ThreadPoolExecutor(len(clicks) - 1) as pool:
            futures = []
            for n in range(2, 6):  # a click every 0.2 s, each request carrying every click so far, as the editor
                futures.append(pool.submit(client.interactive, ml["id"], task["id"], clicks[:n]))
                time.sleep(SPACING_S)
            replies = [future.result() for future in futures]
        calls = proxy.predictions()[1:]
    finally:
        proxy.stop()
    assert all("errors" not in reply for reply in replies), replies
    assert len(calls) == 4  # Label Studio forwarded every request of the burst
    forwards = [int(call["forwards"]) for call in calls]
    assert 0 in forwards, calls  # a request overtaken by a newer one was answered without work
    assert sum(forwards) <= 4, calls  # four new clicks: never more than one forward each
    # The request that reached the backend last is the one it computes; its reply must be a mask, not a superseded
    # blank (in the editor's order that is the newest request, unless Label Studio reordered the burst).
    last = max(calls, key=lambda call: call["arrived"])
    assert replies[len(last["body"]["params"]["context"]["result"]) - 2]["data"]["result"], calls
