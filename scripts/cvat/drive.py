"""Drive a real CVAT (v2.73.0, ``scripts/cvat/services.sh``) against ``adaptiveclick serve`` and record it.

CVAT's server calls the backend as its nuclio dashboard (``CVAT_NUCLIO_HOST=127.0.0.1``, port 8070,
``CVAT_NUCLIO_INVOKE_METHOD=dashboard``, basic auth from the netrc file ``$CVAT_CACHE/netrc``): a recording proxy on
8070 forwards to ``adaptiveclick serve`` (gunicorn, the production path, with that basic auth) and writes down
every call. Then:

1. ``api``: a task with evaluation images (GrabCut, Berkeley) made through CVAT's REST API; clicks and a fractional
   box sent through CVAT's own interactor API (``POST /api/lambda/functions/<name>``), one request a click, each
   reply compared with ``adaptiveclick predict`` on the same clicks; two parts of one object; a refused click, an
   unknown function asked for as a user of the ``worker`` group only: no text carries the dashboard's password.
2. ``ui``: the same through CVAT's React UI in headless Chromium (``services.sh start-ui``): a box first (two
   clicks), a positive and a negative click, "Done" (N) in mask mode; then "Convert masks to polygons" on, the box
   option off, two positive clicks on the two parts of an object, "Done"; the job saved, the saved shapes read back
   through the REST API and compared with ``predict`` on the clicks CVAT really sent; a screenshot.

Writes the capture (``--out``, the images named by their dataset path, not embedded) and the screenshot
(``--screenshot``). ``tests/e2e/test_cvat_real_e2e.py`` runs it (``make test-cvat``);
``tests/test_cvat_replay.py`` replays the capture in CI.

    CVAT_CACHE=/work/cache/cvat bash scripts/cvat/services.sh start && bash scripts/cvat/services.sh start-ui
    .venv/bin/python scripts/cvat/drive.py --out tests/e2e/recorded/cvat-2.73.0.json --screenshot docs/cvat_ui.png
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import netrc
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from testkit.cvat_ui import decode_cvat_mask, ui_objects  # noqa: E402
from testkit.ls_harness import Backend  # noqa: E402
from testkit.proxy import ForwardingProxy  # noqa: E402

SHARED = Path(os.environ.get("ADAPTIVECLICK_SHARED", REPO.parent / "shared"))
IMAGES = ("GrabCut/images/124080.jpg", "Berkeley/images/42049.jpg")  # frame 0, frame 1
FUNCTION = "pth-adaptiveclick"
DASHBOARD_PORT = 8070
CHROMIUM = "/usr/bin/chromium"


class DriveError(RuntimeError):
    pass


# --- the backend behind a recording proxy on CVAT's dashboard port


class Recorder:
    """A pass-through proxy on 127.0.0.1:``port`` that records each call CVAT makes to the dashboard: the nuclio
    headers, whether basic auth came along, the body (the frame by its sha256), the reply and its X-Forwards."""

    def __init__(self, target: str, port: int, images: dict[str, str]):
        self.target, self.calls, self.images = target, [], images
        self.lock = threading.Lock()
        self.proxy = ForwardingProxy(target, self.record, port=port, http11=True).start()

    def record(self, method: str, path: str, headers: Any, raw: bytes, reply: requests.Response) -> None:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"unparsed_bytes": len(raw)}
        if isinstance(body, dict) and isinstance(body.get("image"), str):
            data = base64.b64decode(body["image"])
            digest = hashlib.sha256(data).hexdigest()
            body = {**body, "image": {"sha256": digest, "bytes": len(data), "dataset": self.images.get(digest)}}
        try:
            reply_body: Any = reply.json()
        except ValueError:
            reply_body = reply.text[:2000]
        call = {
            "method": method,
            "path": path,
            "nuclio_headers": {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-nuclio")},
            "basic_auth": str(headers.get("Authorization", "")).startswith("Basic "),
            "body": body,
            "status": reply.status_code,
            "forwards": reply.headers.get("X-Forwards"),
            "reply": reply_body,
        }
        with self.lock:
            self.calls.append(call)

    def invocations(self) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["path"].startswith("/api/function_invocations")]

    def stop(self) -> None:
        self.proxy.stop()


def dashboard_password(cache: Path) -> tuple[str, str]:
    auth = netrc.netrc(str(cache / "netrc")).authenticators("127.0.0.1")
    if auth is None:
        raise DriveError(f"{cache / 'netrc'} has no machine 127.0.0.1 (services.sh start writes it)")
    return auth[0], auth[2]


# --- CVAT's REST API


class Cvat:
    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (user, password)

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200, 201, 202), **kw: Any) -> Any:
        self.session.cookies.clear()  # basic auth on every call: a session cookie would ask for a CSRF token
        reply = self.session.request(method, self.url + path, timeout=300, **kw)
        if reply.status_code not in expect:
            raise DriveError(f"{method} {path} -> {reply.status_code}: {reply.text[:500]}")
        return reply.json() if reply.content else None

    def create_task(self, name: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        task = self.call("POST", "/api/tasks", json={"name": name, "labels": [{"name": "object"}]})
        multipart = [(f"client_files[{i}]", (n, data)) for i, (n, data) in enumerate(files)]
        started = self.call(
            "POST",
            f"/api/tasks/{task['id']}/data",
            data={"image_quality": 95, "sorting_method": "predefined"},
            files=multipart,
        )
        deadline = time.monotonic() + 600
        while True:
            state = self.call("GET", f"/api/requests/{started['rq_id']}")
            if state["status"] == "finished":
                break
            if state["status"] == "failed" or time.monotonic() > deadline:
                raise DriveError(f"task data upload: {state}")
            time.sleep(1)
        job = self.call("GET", f"/api/jobs?task_id={task['id']}")["results"][0]
        label = self.call("GET", f"/api/labels?task_id={task['id']}")["results"][0]
        return {"task": task["id"], "job": job["id"], "label": label["id"]}

    def interact(self, task: int, frame: int, pos=(), neg=(), box=()) -> requests.Response:
        body = {
            "task": task,
            "frame": frame,
            "pos_points": [list(p) for p in pos],
            "neg_points": [list(p) for p in neg],
            "obj_bbox": [list(c) for c in box],
        }
        self.session.cookies.clear()
        return self.session.post(f"{self.url}/api/lambda/functions/{FUNCTION}", json=body, timeout=300)


# --- what predict gives


def predict(image: Path, clicks: list[tuple[float, float, bool]], box=None) -> np.ndarray:
    """``adaptiveclick predict`` on the clicks CVAT sent (x, y floats -> the pixel they fall in, as the backend
    reads them) and the box's corners as they are."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mask.png"
        args = [sys.executable, "-m", "cli", "predict", str(image), "--out", str(out)]
        if box is not None:
            args += ["--box", ",".join(str(v) for corner in box for v in corner)]
        for x, y, positive in clicks:
            args += ["--click", f"{int(y)},{int(x)}" + ("" if positive else ",neg")]
        subprocess.run(args, cwd=REPO, check=True, capture_output=True, timeout=600)
        return np.asarray(Image.open(out)) > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def reply_union(reply: dict, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    for shape in reply.get("shapes", []):
        mask |= decode_cvat_mask(shape["points"], height, width)
    return mask


def inner_point(mask: np.ndarray) -> tuple[float, float]:
    import cv2

    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x) + 0.5, float(y) + 0.5


def two_objects(gt: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Two positive clicks whose mask has two parts on the Berkeley frame: inside the object, and on the second
    object in the bottom-right corner (the reply then holds two parts: polygon mode must keep both)."""
    height, width = gt.shape
    return inner_point(gt), (round(width * 0.9) + 0.5, round(height * 0.85) + 0.5)


def ground_truth(relative: str) -> np.ndarray:
    path = SHARED / "datasets" / relative
    (gt,) = [p for p in (path.parent.parent / "masks").iterdir() if p.stem == path.stem]
    return np.asarray(Image.open(gt).convert("L")) == 1


# --- 1. through CVAT's API


def drive_api(cvat: Cvat, ids: dict[str, Any], recorder: Recorder, password: str, worker: Cvat) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": []}
    grabcut, berkeley = (SHARED / "datasets" / p for p in IMAGES)
    functions = cvat.call("GET", "/api/lambda/functions")
    out["functions_listed"] = [f["id"] for f in functions]
    listed = next((f for f in functions if f["id"] == FUNCTION), None)
    if listed is None:
        raise DriveError(f"{FUNCTION} is not among CVAT's functions: {out['functions_listed']}")
    out["function_as_cvat_lists_it"] = {
        k: listed.get(k)
        for k in ("kind", "min_pos_points", "min_neg_points", "startswith_box", "startswith_box_optional")
    }

    def step(name: str, image: Path, frame: int, clicks, box=None) -> None:
        before = len(recorder.invocations())
        pos = [(x, y) for x, y, p in clicks if p]
        neg = [(x, y) for x, y, p in clicks if not p]
        reply = cvat.interact(ids["task"], frame, pos, neg, box or ())
        if reply.status_code != 200:
            raise DriveError(f"{name}: {reply.status_code} {reply.text[:300]}")
        shapes = reply.json()
        height, width = np.asarray(Image.open(image)).shape[:2]
        mask = reply_union(shapes, height, width)
        expected = predict(image, clicks, box)
        calls = recorder.invocations()[before:]
        out["steps"].append(
            {
                "name": name,
                "frame": frame,
                "clicks": clicks,
                "box": box,
                "shapes": len(shapes["shapes"]),
                "iou_with_predict": iou(mask, expected),
                "differing_px": int(np.count_nonzero(mask ^ expected)),
                "forwards": [c["forwards"] for c in calls],
                "invocations": len(calls),
                "polygon_mode_kept_px": int(
                    np.count_nonzero(
                        np.logical_or.reduce(ui_objects(shapes, height, width, polygons=True) or [np.zeros_like(mask)])
                        & mask
                    )
                ),
                "mask_px": int(np.count_nonzero(mask)),
            }
        )

    gt0, gt1 = ground_truth(IMAGES[0]), ground_truth(IMAGES[1])
    p1 = inner_point(gt0)
    ys, xs = np.nonzero(~gt0)
    n1 = (float(xs[len(xs) // 3]) + 0.5, float(ys[len(ys) // 3]) + 0.5)
    step("one click", grabcut, 0, [(*p1, True)])
    step("click + negative", grabcut, 0, [(*p1, True), (*n1, False)])
    ys, xs = np.nonzero(gt1)
    box = [[float(xs.min()) - 3.4, float(ys.min()) - 2.6], [float(xs.max()) + 3.5, float(ys.max()) + 2.7]]
    step("box alone", berkeley, 1, [], box)
    step("box + click", berkeley, 1, [(*inner_point(gt1), True)], box)
    main, second = two_objects(gt1)
    step("two objects, one click", berkeley, 1, [(*main, True)])
    step("two objects, two clicks", berkeley, 1, [(*main, True), (*second, True)])

    # The password must not reach CVAT's users: a refused click and an unknown function, as a worker.
    refused = cvat.interact(ids["task"], 0, [(100000.0, 5.0)])
    unknown = worker.session.get(f"{cvat.url}/api/lambda/functions/no-such-function", timeout=60)
    listing_as_worker = worker.session.get(f"{cvat.url}/api/lambda/functions", timeout=60)
    out["errors_seen_by_cvat_users"] = [
        {"what": "a click outside the image (admin)", "status": refused.status_code, "text": refused.text[:500]},
        {
            "what": "GET /api/lambda/functions/no-such-function (worker)",
            "status": unknown.status_code,
            "text": unknown.text[:500],
        },
        {
            "what": "GET /api/lambda/functions (worker)",
            "status": listing_as_worker.status_code,
            "text": listing_as_worker.text[:200],
        },
    ]
    out["password_in_any_error"] = any(password in e["text"] for e in out["errors_seen_by_cvat_users"])
    return out


# --- 2. through CVAT's UI


def drive_ui(
    ui_url: str, cvat: Cvat, ids: dict[str, Any], recorder: Recorder, screenshot: Path | None, user: str, password: str
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {"steps": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        notes: list[str] = []
        page.on("console", lambda m: notes.append(m.text[:300]) if m.type == "error" else None)
        page.goto(f"{ui_url}/auth/login", timeout=180_000)
        page.fill("#credential", user)
        page.fill("#password", password)
        page.click(".cvat-credentials-action-button")
        page.wait_for_url("**/tasks**", timeout=120_000)
        page.goto(f"{ui_url}/tasks/{ids['task']}/jobs/{ids['job']}", timeout=180_000)
        page.wait_for_selector("#cvat_canvas_background", timeout=180_000)
        time.sleep(3)

        def to_screen(x: float, y: float) -> tuple[float, float]:
            """Image pixels -> page coordinates, through the canvas background's box and its pixel size."""
            box = page.locator("#cvat_canvas_background").bounding_box()
            width = page.eval_on_selector("#cvat_canvas_background", "e => e.width")
            height = page.eval_on_selector("#cvat_canvas_background", "e => e.height")
            return box["x"] + x * box["width"] / width, box["y"] + y * box["height"] / height

        def wait_calls(n: int, timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while len(recorder.invocations()) < n:
                if time.monotonic() > deadline:
                    raise DriveError(f"CVAT sent {len(recorder.invocations())} invocations, expected {n}")
                time.sleep(0.2)
            time.sleep(1.5)  # the UI draws the reply

        def open_interactor(polygons: bool, start_with_box: bool) -> None:
            page.click(".cvat-tools-control")
            page.get_by_role("tab", name="Interactors").click()
            _set_switch(page, "Convert masks to polygons", polygons)
            _set_switch(page, "Start with a bounding box", start_with_box)
            page.click(".cvat-tools-interact-button")
            time.sleep(1)

        # -- mask mode on the GrabCut frame: a box (two clicks), a positive, a negative, Done
        gt0 = ground_truth(IMAGES[0])
        ys, xs = np.nonzero(gt0)
        corners = [(float(xs.min()) - 4.3, float(ys.min()) - 3.6), (float(xs.max()) + 4.4, float(ys.max()) + 3.7)]
        px, py = inner_point(gt0)
        nys, nxs = np.nonzero(~gt0)
        nx, ny = float(nxs[len(nxs) // 2]), float(nys[len(nys) // 2])
        open_interactor(polygons=False, start_with_box=True)
        start = len(recorder.invocations())
        page.mouse.click(*to_screen(*corners[0]))
        page.mouse.click(*to_screen(*corners[1]))
        wait_calls(start + 1)
        page.mouse.click(*to_screen(px, py))
        wait_calls(start + 2)
        page.mouse.click(*to_screen(nx, ny), button="right")
        wait_calls(start + 3)
        if screenshot is not None:
            for close in page.locator(".ant-notification-notice-close").all():  # "Could not get formats": datumaro
                close.click()
            page.mouse.move(*to_screen(2, 2))
            time.sleep(1)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            shrink_screenshot(screenshot)
        page.keyboard.press("n")
        time.sleep(2)
        mask_calls = recorder.invocations()[start:]

        # -- polygon mode on the Berkeley frame: box option off, two positive clicks on the two parts, Done
        page.keyboard.press("f")  # next frame
        time.sleep(3)
        # Three pixels off the API step's clicks: new clicks, so each costs its own forward here too.
        parts = [(x + 3, y + 3) for x, y in two_objects(ground_truth(IMAGES[1]))]
        open_interactor(polygons=True, start_with_box=False)
        start = len(recorder.invocations())
        page.mouse.click(*to_screen(*parts[0]))
        wait_calls(start + 1)
        page.mouse.click(*to_screen(*parts[1]))
        wait_calls(start + 2)
        page.keyboard.press("n")
        time.sleep(2)
        polygon_calls = recorder.invocations()[start:]
        page.keyboard.press("Control+s")
        time.sleep(4)
        out["console_errors"] = notes[-20:]
        browser.close()

    saved = cvat.call("GET", f"/api/jobs/{ids['job']}/annotations")["shapes"]
    out["saved_shapes"] = [{"type": s["type"], "frame": s["frame"], "points": len(s["points"])} for s in saved]
    out["mask_mode"] = compare_saved(saved, 0, mask_calls, "mask")
    out["polygon_mode"] = compare_saved(saved, 1, polygon_calls, "polygon")
    out["calls"] = {"mask_mode": len(mask_calls), "polygon_mode": len(polygon_calls)}
    return out


def shrink_screenshot(path: Path) -> None:
    """The README's screenshot at 1200 px wide in 256 colours: a few hundred kB, not one MB."""
    image = Image.open(path).convert("RGB")
    image = image.resize((1200, round(image.height * 1200 / image.width)), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _set_switch(page: Any, label: str, on: bool) -> None:
    """Set one of the interactor popover's switches (a switch button, then its label's text) to ``on``."""
    switch = page.locator(f"xpath=//span[normalize-space()='{label}']/preceding-sibling::button[@role='switch']")
    if (switch.first.get_attribute("aria-checked") == "true") != on:
        switch.first.click()


def compare_saved(saved: list[dict], frame: int, calls: list[dict], kind: str) -> dict[str, Any]:
    """The shapes "Done" saved on ``frame`` against ``predict`` on the last request's clicks (the box first)."""
    image = SHARED / "datasets" / IMAGES[frame]
    height, width = np.asarray(Image.open(image)).shape[:2]
    last = calls[-1]["body"]
    clicks = [(x, y, True) for x, y in last["pos_points"]] + [(x, y, False) for x, y in last["neg_points"]]
    # CVAT sends sets; the clicks came one a request, in this order: every positive before the negative here.
    box = last["obj_bbox"] or None
    expected = predict(image, clicks, box)
    shapes = [s for s in saved if s["frame"] == frame and s["type"] == kind]
    got = np.zeros((height, width), bool)
    import cv2

    for s in shapes:
        if kind == "mask":
            got |= decode_cvat_mask([int(round(v)) for v in s["points"]], height, width)
        else:
            poly = np.zeros((height, width), np.uint8)
            cv2.fillPoly(poly, [np.round(np.array(s["points"]).reshape(-1, 2)).astype(np.int32)], 1)
            got |= poly.astype(bool)
    reply_mask = reply_union(last_reply(calls), height, width)
    from ml_backend.cvat.interactor import mask_parts

    parts = mask_parts(expected)
    return {
        "parts": [int(p.sum()) for p in parts],
        "part_px_kept": [int(np.count_nonzero(p & got)) for p in parts],
        # What one shape holding every part kept in polygon mode before (CVAT keeps its longest outline only).
        "one_shape_would_keep_px": int(parts[0].sum()) if parts else 0,
        "shapes": len(shapes),
        "clicks": clicks,
        "box": box,
        "iou_with_predict": iou(got, expected),
        "reply_iou_with_predict": iou(reply_mask, expected),
        "reply_shapes": len(last_reply(calls).get("shapes", [])),
        "forwards": [c["forwards"] for c in calls],
        "predict_px": int(expected.sum()),
        "predict_px_outside_saved": int(np.count_nonzero(expected & ~got)),
    }


def last_reply(calls: list[dict]) -> dict:
    return calls[-1]["reply"] if calls and isinstance(calls[-1]["reply"], dict) else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cvat", default="http://127.0.0.1:7000")
    parser.add_argument("--ui", default="http://localhost:3000")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("CVAT_CACHE", REPO / ".cache" / "cvat")))
    parser.add_argument("--admin", default=os.environ.get("CVAT_ADMIN_USER", "admin"))
    parser.add_argument("--admin-password", default=os.environ.get("CVAT_ADMIN_PASSWORD", "adaptiveclick-admin"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--no-ui", action="store_true")
    args = parser.parse_args()

    user, password = dashboard_password(args.cache)
    files = [(f"{i}_{Path(p).name}", (SHARED / "datasets" / p).read_bytes()) for i, p in enumerate(IMAGES)]
    images = {hashlib.sha256(data).hexdigest(): p for (_, data), p in zip(files, IMAGES)}
    log = args.cache / "logs" / "adaptiveclick-serve.log"
    backend = Backend({"BASIC_AUTH_USER": user, "BASIC_AUTH_PASS": password, "MODEL_DIR": "", "LOG_LEVEL": "INFO"}, log)
    backend.start(timeout=300)
    recorder = Recorder(backend.url, DASHBOARD_PORT, images)
    capture: dict[str, Any] = {"cvat": "2.73.0", "images": IMAGES, "dashboard": f"127.0.0.1:{DASHBOARD_PORT}"}
    try:
        cvat = Cvat(args.cvat, args.admin, args.admin_password)
        worker = ensure_worker(cvat)
        ids = cvat.create_task(f"adaptiveclick drive {time.strftime('%H:%M:%S')}", files)
        capture["task"] = ids
        capture["api"] = drive_api(cvat, ids, recorder, password, worker)
        if not args.no_ui:
            capture["ui"] = drive_ui(args.ui, cvat, ids, recorder, args.screenshot, args.admin, args.admin_password)
    finally:
        capture["calls"] = recorder.calls
        capture["password_anywhere_in_calls"] = password in json.dumps(recorder.calls)
        recorder.stop()
        backend.stop()
        write_capture(args.out, capture)
    print(json.dumps({k: v for k, v in capture.items() if k != "calls"}, indent=1, default=str)[:6000])
    return 0


def write_capture(path: Path, capture: dict[str, Any]) -> None:
    """The capture as JSON: readable at the top, one line per recorded call (the masks' runs are long)."""
    calls = capture.get("calls", [])
    head = json.dumps({**capture, "calls": []}, indent=1, default=str)
    lines = ",\n".join("  " + json.dumps(c, separators=(",", ":"), default=str) for c in calls)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head.replace('"calls": []', '"calls": [\n' + lines + "\n ]") + "\n")


def ensure_worker(cvat: Cvat) -> Cvat:
    """A CVAT user whose only group is ``worker`` (made once through the API)."""
    name, secret = "drive-worker", "Worker-pass-1234"
    users = cvat.call("GET", f"/api/users?search={name}")["results"]
    if not users:
        registered = requests.post(
            f"{cvat.url}/api/auth/register",
            timeout=60,
            json={
                "username": name,
                "email": f"{name}@localhost",
                "password1": secret,
                "password2": secret,
                "first_name": "w",
                "last_name": "w",
            },
        )
        if registered.status_code not in (200, 201):
            raise DriveError(f"registering {name}: {registered.status_code} {registered.text[:300]}")
        users = cvat.call("GET", f"/api/users?search={name}")["results"]
    cvat.call("PATCH", f"/api/users/{users[0]['id']}", json={"groups": ["worker"]})
    worker = Cvat(cvat.url, name, secret)
    worker.session.auth = (name, secret)
    return worker


if __name__ == "__main__":
    sys.exit(main())
