"""Record what the real Label Studio labeling UI sends an interactive backend, and what it does with the replies.

Issue 27 asks what arrives after a smart box and whether a click can continue an accepted region; this script
answers from the real editor. It starts Label Studio 1.23.2 and ``adaptiveclick serve`` (``testkit/ls_harness.py``)
with a recording proxy between them, opens a task in headless Chromium (``screenshot_labeling_ui.open_task``),
switches Auto-Annotation on and, with the mouse and keyboard only:

1. ``box_then_clicks``: draws a box with the smart RectangleLabels tool, clicks a positive and an Alt+click
   negative smart keypoint inside it, accepts the suggestion and submits the annotation;
2. ``continue_region``: reopens the task and clicks a smart keypoint inside the submitted region, then accepts;
3. ``auto_accept``: on a second task, with Auto-Accept Suggestions on, two clicks, then (after the draft autosave)
   a negative click on the second region.

once with a BrushLabels and once with a PolygonLabels output tag. For every step it writes what the page posted to
``/api/ml/{id}/interactive-annotating``, what the backend received on ``/predict`` (the task's annotations and
drafts summarised, RLE and points by their length), the reply, and the regions and suggestions the editor holds
after it (read from the editor's store), plus the IoU of each returned mask with the ground truth:

    .venv/bin/python scripts/capture_labeling_ui.py --out capture.json

Needs what ``screenshot_labeling_ui.py`` needs (Label Studio in ``.cache/ls-venv``, ``/usr/bin/chromium``,
Playwright for Python, the starter weights) and ``../shared/datasets/GrabCut``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from screenshot_labeling_ui import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    GRABCUT,
    ScreenshotError,
    decode_mask,
    open_task,
    wait_model_loaded,
)

from ml_backend.labelstudio.regions import read_region  # noqa: E402
from testkit.ls_harness import Backend, LabelStudio, RecordingProxy, running  # noqa: E402

IMAGE = GRABCUT / "llama.png"
GROUND_TRUTH = GRABCUT.parent / "masks" / "llama.png"
BOX = (110, 105, 372, 371)  # x0, y0, x1, y1 in image pixels: around the llama (its tight box: 122, 116, 359, 371)
CLICKS = ((250, 200, True), (150, 340, False))  # (row, col, positive): its neck; the ruins right of its head
OUTPUTS = {
    "brush": '<BrushLabels name="out" toName="image"><Label value="Object"/></BrushLabels>',
    "polygon": '<PolygonLabels name="out" toName="image"><Label value="Object"/></PolygonLabels>',
}
CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object" smart="true"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
  {output}
</View>"""
# The order of the label buttons under the image: one "Object" per control tag, as the config lists them.
LABEL_BUTTON = {"box": 0, "kp": 1, "out": 2}
# What the editor holds, read from its store (window.Htx is the labeling editor's root store).
EDITOR_STATE = """() => { const a = Htx.annotationStore.selected; const brief = (r) => ({
  id: r.id, type: r.type, label: r.labelName, dynamic: r.dynamic, fromSuggestion: r.fromSuggestion });
  return {annotation: a.pk || a.id, regions: a.regions.map(brief), suggestions: [...a.suggestions.values()].map(brief),
          awaiting: Htx.awaitingSuggestions}; }"""


def brief_region(region: dict[str, Any]) -> dict[str, Any]:
    """A result region without its bulk: RLE and points by their length."""
    value = dict(region.get("value") or {})
    if "rle" in value:
        value["rle"] = f"<{len(value['rle'])} numbers>"
    if "points" in value:
        value["points"] = f"<{len(value['points'])} points>"
    keep = ("id", "type", "from_name", "is_positive", "origin", "original_width", "original_height")
    return {**{k: region[k] for k in keep if k in region}, "value": value}


def brief_annotations(annotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Saved annotations, each as its id and its brief regions."""
    return [{"id": a["id"], "result": list(map(brief_region, a["result"]))} for a in annotations]


def brief_predict(call: dict[str, Any]) -> dict[str, Any]:
    """What the backend received on one ``/predict``: the context and the task's annotations and drafts."""
    body = call["body"]
    task = body["tasks"][0]

    def holder(a: dict[str, Any]) -> dict[str, Any]:
        """An annotation or draft: which one (a draft names its annotation, if any), when, and its regions."""
        head = {k: a.get(k) for k in ("id", "annotation", "updated_at", "was_cancelled") if k in a}
        return {**head, "result": list(map(brief_region, a.get("result") or []))}

    return {
        "context_result": [brief_region(r) for r in body["params"]["context"]["result"]],
        "task_annotations": [holder(a) for a in task.get("annotations") or []],
        "task_drafts": [holder(d) for d in task.get("drafts") or []],
        "task_keys": sorted(task),
        "forwards": call["forwards"],
        "superseded": call["superseded"],
    }


class Editor:
    """The labeling page of one task, driven with the mouse and keyboard, recording the interactive calls."""

    def __init__(self, page: Any, proxy: RecordingProxy, image_size: tuple[int, int], truth: np.ndarray):
        self.page = page
        self.proxy = proxy
        self.width, self.height = image_size
        self.truth = truth
        self.sent: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.last_mask: np.ndarray | None = None  # the newest reply's mask
        self._seen_predict = len(proxy.predictions())
        page.on("request", self._on_request)
        page.on("response", self._on_response)

    def _on_request(self, request: Any) -> None:
        if "/interactive-annotating" in request.url:
            self.sent.append(json.loads(request.post_data or "null"))

    def _on_response(self, response: Any) -> None:
        if "/interactive-annotating" in response.url:
            try:
                self.replies.append(response.json())
            except Exception:  # a reply that is not JSON is recorded as such
                self.replies.append({"not_json": response.status})

    def to_page(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel (x, y) -> page coordinates (the largest canvas shows the whole image)."""
        boxes = [b for b in (c.bounding_box() for c in self.page.locator("canvas").all()) if b and b["width"] > 50]
        box = max(boxes, key=lambda b: b["width"] * b["height"])
        return box["x"] + (x + 0.5) / self.width * box["width"], box["y"] + (y + 0.5) / self.height * box["height"]

    def auto_annotation(self, accept: bool = False) -> None:
        self.page.get_by_text("Auto-Annotation", exact=True).click()
        if accept:
            self.page.get_by_text("Auto-Accept Suggestions", exact=True).click()
        self.page.wait_for_timeout(300)

    def tool(self, control: str, aria: str) -> None:
        """Pick the control's label (its button under the image), then the smart tool named ``aria``."""
        # Escape first: with a region selected, a label button relabels that region instead of picking the label.
        self.page.keyboard.press("Escape")
        selected = f"() => Htx.annotationStore.selected.names.get('{control}').selectedLabels.length > 0"
        if not self.page.evaluate(selected):  # a label button toggles: click it only when it is not picked
            self.page.get_by_text("Object", exact=True).nth(LABEL_BUTTON[control]).click()
        self.page.evaluate(f"() => document.querySelector('.lsf-tool_smart[aria-label={aria}]').parentElement.click()")
        self.page.wait_for_timeout(300)

    def wait_reply(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.page.evaluate(EDITOR_STATE)
            if len(self.replies) >= len(self.sent) and not state["awaiting"]:
                break
            self.page.wait_for_timeout(250)
        else:
            raise ScreenshotError(f"no reply to the interactive call within {timeout:.0f} s")
        self.page.wait_for_timeout(800)  # the editor renders the suggestion after the reply

    def record(self, name: str, sent_from: int) -> dict[str, Any]:
        """One step: what was posted and received since ``sent_from``, the replies, the editor's regions."""
        calls = self.proxy.predictions()
        step = {
            "step": name,
            "page_sent": [
                {**body, "context": {"result": [brief_region(r) for r in body["context"]["result"]]}}
                for body in self.sent[sent_from:]
            ],
            "backend_received": [brief_predict(c) for c in calls[self._seen_predict :]],
            "replies": [],
            "editor": self.page.evaluate(EDITOR_STATE),
        }
        self._seen_predict = len(calls)
        for reply in self.replies[sent_from:]:
            result = (reply.get("data") or {}).get("result") or []
            step["replies"].append(
                {"regions": [brief_region(r) for r in result], "iou_with_truth": self.iou(result), "raw": reply}
            )
        for reply in step["replies"]:
            reply.pop("raw")
        self.steps.append(step)
        return step

    def iou(self, result: list[dict[str, Any]]) -> float | None:
        from ml_backend.masks.polygons import polygons_to_mask

        brushes = [r for r in result if r.get("type") == "brushlabels"]
        polygons = [r["value"]["points"] for r in result if r.get("type") == "polygonlabels"]
        if brushes:
            mask = decode_mask(brushes[0])
        elif polygons:
            scale = np.array([self.width, self.height]) / 100.0  # points are in percent
            mask = polygons_to_mask([np.array(p) * scale for p in polygons], self.height, self.width)
        else:
            return None
        self.last_mask = mask
        return round(float((mask & self.truth).sum() / max(1, (mask | self.truth).sum())), 3)

    def draw_box(self, box: tuple[int, int, int, int]) -> dict[str, Any]:
        start = len(self.sent)
        self.tool("box", "rectangle-tool")
        x0, y0 = self.to_page(box[0], box[1])
        x1, y1 = self.to_page(box[2] - 1, box[3] - 1)
        self.page.mouse.move(x0, y0)
        self.page.mouse.down()
        self.page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
        self.page.mouse.move(x1, y1, steps=5)
        self.page.mouse.up()
        self.wait_reply()
        return self.record("box", start)

    def click(
        self, row: int, col: int, positive: bool, name: str, pick_tool: bool = True, over: bool = True
    ) -> dict[str, Any]:
        """A smart keypoint at pixel (row, col); Alt makes it negative. ``over``: hold Ctrl, which the editor needs
        to put a keypoint on top of another region (a plain click there selects that region instead)."""
        start = len(self.sent)
        if pick_tool:
            self.tool("kp", "key-point-tool")
        x, y = self.to_page(col, row)
        keys = (["Control"] if over else []) + ([] if positive else ["Alt"])
        for key in keys:
            self.page.keyboard.down(key)
        self.page.mouse.click(x, y)
        for key in reversed(keys):
            self.page.keyboard.up(key)
        if len(self.sent) > start or over:
            self.wait_reply()
        else:
            self.page.wait_for_timeout(1500)
        step = self.record(name, start)
        step["selected"] = self.page.evaluate("() => Htx.annotationStore.selected.selectedRegions.map(r => r.id)")
        return step

    def accept(self) -> dict[str, Any]:
        start = len(self.sent)
        self.page.get_by_test_id("bottombar-accept-suggestions-button").click()
        self.page.wait_for_timeout(1000)
        return self.record("accept", start)

    def submit(self) -> dict[str, Any]:
        start = len(self.sent)
        buttons = self.page.get_by_test_id("bottombar-submit-button")
        if buttons.count() == 0:  # a submitted annotation offers Update instead
            buttons = self.page.get_by_test_id("bottombar-update-button")
        buttons.first.click()
        self.page.wait_for_timeout(2000)
        return self.record("submit", start)


def inside(region_mask: np.ndarray) -> tuple[int, int]:
    """The pixel of a mask farthest from its border (where an annotator clicks to continue it)."""
    import cv2

    dist = cv2.distanceTransform(np.pad(region_mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(row), int(col)


def capture(ls: LabelStudio, proxy: RecordingProxy, shape: str, args: argparse.Namespace) -> dict[str, Any]:
    """The three scenarios on a fresh project whose output tag is ``shape``."""
    from playwright.sync_api import sync_playwright

    client = ls.client()
    project = client.create_project(title=f"capture {shape}", config=CONFIG.format(output=OUTPUTS[shape]))
    client.upload(project, IMAGE)
    client.upload(project, IMAGE)  # a second task for the auto-accept scenario
    tasks = sorted(client.tasks(project), key=lambda t: t["id"])
    ml = client.connect_backend(project, proxy.url)
    if ml.get("readable_state") != "Connected":
        raise ScreenshotError(f"Label Studio could not connect the backend: {ml}")
    with Image.open(IMAGE) as im:
        size = im.size
    truth = np.asarray(Image.open(GROUND_TRUTH)) > 0  # the shared copy stores 0/1
    out: dict[str, Any] = {"shape": shape, "project": project, "config": CONFIG.format(output=OUTPUTS[shape])}
    viewport = {"width": 1366, "height": 800}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = open_task(browser, ls.url, project, tasks[0]["id"], viewport, args.timeout)
            editor = Editor(page, proxy, size, truth)
            editor.auto_annotation()
            editor.draw_box(BOX)
            (row, col, pos), (row2, col2, pos2) = CLICKS
            editor.click(row, col, pos, "plain click inside the box (no Ctrl)", over=False)
            editor.click(row, col, pos, "click 1 (Ctrl+click, positive, inside the box)")
            editor.click(row2, col2, pos2, "click 2 (Ctrl+Alt+click, negative, inside the box)")
            editor.accept()
            editor.submit()
            if args.screenshots:
                page.screenshot(path=str(args.out.with_suffix(f".{shape}.box.png")))
            out["box_then_clicks"] = editor.steps
            saved = client.call("GET", f"/api/tasks/{tasks[0]['id']}/annotations/")
            out["saved_annotations"] = brief_annotations(saved)
            page.close()

            page = open_task(browser, ls.url, project, tasks[0]["id"], viewport, args.timeout)
            editor = Editor(page, proxy, size, truth)
            editor.auto_annotation()
            region = next(r for r in saved[-1]["result"] if r["from_name"] == "out")
            row, col = inside(read_region(region, f"saved region {region['id']}").mask)
            step = editor.click(row, col, True, "click inside the submitted region (reopened task)")
            step["clicked_region"] = region["id"]
            editor.accept()
            editor.submit()
            if args.screenshots:
                page.screenshot(path=str(args.out.with_suffix(f".{shape}.continue.png")))
            out["continue_region"] = editor.steps
            saved = client.call("GET", f"/api/tasks/{tasks[0]['id']}/annotations/")
            out["saved_after_continue"] = brief_annotations(saved)
            page.close()

            page = open_task(browser, ls.url, project, tasks[1]["id"], viewport, args.timeout)
            editor = Editor(page, proxy, size, truth)
            editor.auto_annotation(accept=True)
            editor.click(row, col, True, "click 1, auto-accept on")
            editor.click(*CLICKS[0], "click 2, auto-accept on")
            # Once the draft autosave (one per 5 s) has stored the accepted regions, a negative click where the
            # newest one spills over the background corrects that region.
            page.wait_for_timeout(6000)
            spill = editor.last_mask & ~truth
            row, col = inside(spill if spill.sum() > 20 else editor.last_mask)
            step = editor.click(row, col, False, "click 3 (negative) on region 2, 6 s later, auto-accept on")
            step["region_2"] = editor.steps[-2]["editor"]["regions"][-1]["id"]
            out["auto_accept"] = editor.steps
        finally:
            browser.close()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("capture_labeling_ui.json"), help="JSON to write")
    p.add_argument("--shapes", default="brush,polygon", help="output tags to try: brush, polygon or both")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for a page or a reply")
    p.add_argument("--screenshots", action="store_true", help="also write a PNG of the page after each scenario")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with LS/backend logs")
    args = p.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if not args.shapes or any(s not in OUTPUTS for s in args.shapes):
        p.error(f"--shapes: a comma-separated list of {', '.join(OUTPUTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ls-capture-"))
    (tmp / "root").mkdir()
    ls = LabelStudio(tmp / "data", tmp / "root")
    backend: Backend | None = None
    ok = False
    try:
        print(f"starting Label Studio ({tmp})", flush=True)
        ls.start()
        env = {
            "MODEL_ENGINE": "adaptiveclick",
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": ls.personal_access_token(),
            "LOG_LEVEL": "INFO",
            "WORKERS": "1",
            "THREADS": "2",
            "NO_TRAFFIC_WARNING_S": "0",
        }
        backend = Backend(env, tmp / "backend.log")
        proxy = RecordingProxy("http://127.0.0.1:1")  # its target is set once the backend has its port
        with running(ls, backend, proxy.start()):
            backend.start()
            proxy.target = backend.url
            health = wait_model_loaded(backend)
            result: dict[str, Any] = {"label_studio": "1.23.2", "model_version": health.get("model_version")}
            for shape in args.shapes:
                print(f"capturing with a {shape} output tag", flush=True)
                result[shape] = capture(ls, proxy, shape, args)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        ok = True
        print(f"wrote {args.out}")
        return 0
    except (RuntimeError, AssertionError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        ls.stop()
        if backend is not None:
            backend.stop()
        if ok and not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
