"""Screenshot of the real Label Studio labeling UI showing a mask predicted by this backend (for the README).

Starts Label Studio 1.23.2 (``.cache/ls-venv``, through the e2e harness ``testkit/ls_harness.py``) and
``adaptiveclick serve`` on 127.0.0.1, creates a project with the README's labeling config (smart KeyPointLabels +
BrushLabels), uploads the image, connects the backend as an interactive model, sends the clicks the way the
labeling UI does (smart keypoints -> ``POST /api/ml/{id}/interactive-annotating`` -> the backend's ``/predict``),
stores the returned brush mask as a prediction of the task and as an annotation made from it (mask + clicks),
opens the task in headless Chromium logged in as the harness user, waits until the mask is drawn and saves a
screenshot. Everything it starts is stopped at the end.

    .venv/bin/python scripts/screenshot_labeling_ui.py --engine adaptiveclick --out docs/labeling_ui.png

(``--engine grabcut`` for the classical baseline; ``--checkpoint PATH`` for other AdaptiveClick weights.)

Needs Debian's Chromium (``apt-get install -y chromium``) and Playwright for Python in the project venv
(``pip install playwright`` or ``pip install -e .[docs]``; no ``playwright install``: the system Chromium is used).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testkit.ls_harness import LS_PASSWORD, LS_USER, Backend, LabelStudio, LSClient, keypoint, running  # noqa: E402

GRABCUT = Path(os.environ.get("ADAPTIVECLICK_SHARED", REPO.parent / "shared")) / "datasets" / "GrabCut" / "images"
DEFAULT_IMAGE = GRABCUT / "llama.png"  # the e2e tests' local-files image: one llama, clear against the ruins
DEFAULT_CLICKS = "160,260;250,200;340,190"  # head, neck, chest of the llama (row,col in image pixels)
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# See mask_contrast: the page shows the image (outside the mask close to the plain image) with the mask over it
# (inside differs clearly more). Measured with the default image: inside 39, outside 14; blank canvas: ~127/127.
MAX_OUTSIDE_DIFF = 40.0
MIN_CONTRAST = 12.0
KEYPOINT_SIZE = 1.2  # display size of the clicks in the stored annotation (% of the image width)

# Hides what Label Studio may float over the editor (tours, toasts, the "what's new" and feedback popups).
_HIDE_OVERLAYS_CSS = """
[class*="tour"], [class*="Tour"], [class*="toast"], [class*="Toast"], [class*="notification"],
[class*="Notification"], [class*="feedback"], [class*="Feedback"], [class*="walkme"], [id*="beamer"],
.introjs-overlay, .introjs-helperLayer, .introjs-tooltipReferenceLayer, .react-joyride__overlay,
.react-joyride__spotlight, [class*="__floater"] { display: none !important; }
"""


class ScreenshotError(RuntimeError):
    """A step of the screenshot failed; the message says which and how to fix it."""


def parse_clicks(text: str) -> list[tuple[int, int, bool]]:
    """``"R,C[,neg];R,C"`` -> [(row, col, positive)]; a third field ``neg`` (or ``-``/``0``) marks a negative click."""
    clicks = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        fields = [f.strip() for f in part.split(",")]
        if len(fields) not in (2, 3):
            raise argparse.ArgumentTypeError(f"click {part!r}: expected ROW,COL or ROW,COL,neg")
        try:
            row, col = int(fields[0]), int(fields[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"click {part!r}: ROW and COL must be integers") from None
        positive = len(fields) == 2 or fields[2].lower() not in ("neg", "negative", "-", "0", "n")
        clicks.append((row, col, positive))
    if not clicks:
        raise argparse.ArgumentTypeError("no clicks given")
    return clicks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--engine",
        choices=("grabcut", "adaptiveclick"),
        default="adaptiveclick",
        help="MODEL_ENGINE of the backend (default adaptiveclick)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="AdaptiveClick weights (MODEL_CHECKPOINT); default: the backend's default checkpoint",
    )
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help=f"image to label (default {DEFAULT_IMAGE})")
    p.add_argument(
        "--clicks",
        type=parse_clicks,
        default=parse_clicks(DEFAULT_CLICKS),
        help=f'"R,C[,neg];R,C" in image pixels (default "{DEFAULT_CLICKS}": three positive clicks)',
    )
    p.add_argument("--out", type=Path, default=REPO / "docs" / "labeling_ui.png", help="PNG to write")
    p.add_argument(
        "--size",
        default="1366x800",
        help="browser viewport WIDTHxHEIGHT (default 1366x800: at 1280 the editor's footer clips the Update button)",
    )
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for the page to draw the mask")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with LS/backend logs")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 1366x800")
    args.viewport = {"width": width, "height": height}
    return args


def check_prerequisites(args: argparse.Namespace) -> None:
    problems = []
    if not LabelStudio.executable().exists():
        problems.append(
            f"Label Studio is not installed at {LabelStudio.executable()}: run `bash scripts/install_label_studio.sh`"
        )
    if not CHROMIUM.exists():
        problems.append(
            f"Chromium not found at {CHROMIUM}: run `apt-get install -y chromium` (or set CHROMIUM=/path/to/chromium)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ModuleNotFoundError:
        problems.append(
            f"Playwright for Python is missing: `{sys.executable} -m pip install playwright` "
            "(or `pip install -e .[docs]`; do not run `playwright install`, the system Chromium is used)"
        )
    if not args.image.is_file():
        problems.append(f"image not found: {args.image}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        problems.append(f"checkpoint not found: {args.checkpoint}")
    from ml_backend.config import Settings  # torch-free
    from ml_backend.finetuning.model_store import served_checkpoint

    default_weights = served_checkpoint(Settings.from_env())[1]  # what the backend it starts will serve
    if args.engine == "adaptiveclick" and args.checkpoint is None and not default_weights.is_file():
        problems.append(
            f"no AdaptiveClick weights at {default_weights}: pass --checkpoint PATH "
            "(or use --engine grabcut for the classical baseline)"
        )
    if args.checkpoint is not None and args.engine != "adaptiveclick":
        problems.append("--checkpoint only applies to --engine adaptiveclick")
    if problems:
        raise ScreenshotError("cannot make the screenshot:\n  - " + "\n  - ".join(problems))


def wait_model_loaded(backend: Backend, timeout: float = 300) -> dict[str, Any]:
    """The backend loads its model in the background after it starts answering; wait for it."""
    deadline = time.monotonic() + timeout
    health: dict[str, Any] = {}
    while time.monotonic() < deadline:
        health = requests.get(backend.url + "/health", timeout=10).json()
        if health.get("model_loaded"):
            return health
        if backend.proc is not None and backend.proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = backend.log.read_text(errors="replace")[-3000:] if backend.log.exists() else ""
    raise ScreenshotError(f"the backend did not load its model within {timeout:.0f} s ({health}):\n{tail}")


def predict_mask(
    client: LSClient, ml_id: int, task: dict, clicks: list[tuple[int, int, bool]], width: int, height: int
) -> tuple[dict[str, Any], list[dict]]:
    """Send the clicks as smart keypoints, as the labeling UI does; returns the reply's ``data`` and the keypoints."""
    for r, c, _ in clicks:
        if not (0 <= r < height and 0 <= c < width):
            raise ScreenshotError(f"click ({r},{c}) lies outside the {width}x{height} image")
    regions = [keypoint(r, c, pos, width, height, i) for i, (r, c, pos) in enumerate(clicks)]
    reply = client.interactive(ml_id, task["id"], regions)
    if not reply or "errors" in reply or not reply.get("data", {}).get("result"):
        raise ScreenshotError(f"the backend returned no mask for the clicks {clicks}: {reply}")
    return reply["data"], regions


def store_result(client: LSClient, task_id: int, data: dict[str, Any], clicks_regions: list[dict]) -> None:
    """Store the brush mask as a prediction of the task, and an annotation made from it (mask + the clicks).

    The labeling UI does not open a task's prediction by itself while an interactive backend is connected
    (auto-annotation mode): it starts a new, empty annotation. The annotation, derived from the prediction
    (``parent_prediction``) and holding the smart keypoints that produced it, is what an annotator sees after
    clicking and accepting the suggestion, and is what the page opens."""
    version = data.get("model_version") or "adaptiveclick"
    prediction = client.call(
        "POST",
        "/api/predictions",
        json={"task": task_id, "result": data["result"], "score": data.get("score", 0), "model_version": version},
    )
    keypoints = [
        {**{k: v for k, v in r.items() if k != "origin"}, "value": {**r["value"], "width": KEYPOINT_SIZE}}
        for r in clicks_regions
    ]
    client.call(
        "POST",
        f"/api/tasks/{task_id}/annotations",
        json={"task": task_id, "result": data["result"] + keypoints, "parent_prediction": prediction["id"]},
    )


def decode_mask(region: dict[str, Any]) -> np.ndarray:
    """The boolean HxW mask of a brush region (Label Studio RLE)."""
    from label_studio_sdk.converter.brush import decode_rle

    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0


def mask_contrast(page: Any, image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Median |drawn - plain image| inside and outside the mask (0-255 scale).

    Screenshots the largest canvas's box (Konva draws the image there, regions on top) and compares it with the
    plain image resized to it: once the image is drawn the outside is close to it (resampling and the tool bar
    over the right edge cost ~15), and a mask drawn over the object tints the inside."""
    boxes = [b for b in (c.bounding_box() for c in page.locator("canvas").all()) if b and b["width"] > 50]
    if not boxes:
        return 255.0, 255.0
    box = max(boxes, key=lambda b: b["width"] * b["height"])
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB"), dtype=np.float32)
    h, w = shot.shape[:2]
    plain = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.float32)
    inside = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    if inside.all() or not inside.any():
        raise ScreenshotError("the predicted mask is empty or covers the whole image: nothing to show")
    diff = np.abs(shot - plain).mean(axis=2)
    return float(np.median(diff[inside])), float(np.median(diff[~inside]))


def mask_is_drawn(inside: float, outside: float) -> bool:
    return outside < MAX_OUTSIDE_DIFF and inside - outside > MIN_CONTRAST


def open_task(browser: Any, ls_url: str, project: int, task_id: int, viewport: dict[str, int], timeout: float) -> Any:
    """A new page of ``browser``, logged in as the harness user, showing the task's labeling page (its canvas
    drawn). Only Label Studio itself is reachable from the page: nothing leaves 127.0.0.1."""
    page = browser.new_page(viewport=viewport, device_scale_factor=1)
    page.set_default_timeout(timeout * 1000)
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith(ls_url) or route.request.url.startswith(("data:", "blob:"))
            else route.abort()
        ),
    )
    page.goto(ls_url + "/user/login/")
    page.fill("input[name=email]", LS_USER)
    page.fill("input[name=password]", LS_PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit], input[type=submit]")
    if "/user/login" in page.url:
        raise ScreenshotError(f"logging in as {LS_USER} failed (still on {page.url})")
    page.goto(f"{ls_url}/projects/{project}/data?task={task_id}")
    page.add_style_tag(content=_HIDE_OVERLAYS_CSS)
    page.wait_for_selector("canvas", state="visible")
    return page


def screenshot(
    ls: LabelStudio,
    project: int,
    task_id: int,
    image: np.ndarray,
    mask: np.ndarray,
    out: Path,
    timeout: float,
    viewport: dict[str, int],
) -> float:
    """Log in, open the task's labeling page, wait until the mask is drawn, write ``out``; returns the contrast."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        except PlaywrightError as exc:
            raise ScreenshotError(
                f"Chromium at {CHROMIUM} did not start ({exc}); install it with `apt-get install -y chromium`"
            ) from exc
        try:
            page = open_task(browser, ls.url, project, task_id, viewport, timeout)
            with contextlib.suppress(PlaywrightError):  # show the mode the README describes (cosmetic)
                page.get_by_text("Auto-Annotation", exact=True).click(timeout=5000)
            page.mouse.move(0, viewport["height"] - 1)  # no hover highlight on the image
            deadline = time.monotonic() + timeout
            inside = outside = 255.0
            while time.monotonic() < deadline:
                inside, outside = mask_contrast(page, image, mask)
                if mask_is_drawn(inside, outside):
                    break
                page.wait_for_timeout(500)
            else:
                failed = out.with_suffix(".failed.png")
                page.screenshot(path=str(failed))
                raise ScreenshotError(
                    f"the mask did not appear on the labeling page within {timeout:.0f} s "
                    f"(|drawn - image| inside/outside the mask {inside:.0f}/{outside:.0f}; "
                    f"the page as it was: {failed})"
                )
            page.add_style_tag(content=_HIDE_OVERLAYS_CSS)  # again: some popups mount late
            page.wait_for_timeout(1500)  # let fonts and the last layout pass settle
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            return inside - outside
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_prerequisites(args)
    except ScreenshotError as exc:
        print(exc, file=sys.stderr)
        return 2
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="ls-screenshot-"))
    (tmp / "root").mkdir()
    ls = LabelStudio(tmp / "data", tmp / "root")
    env = {
        "MODEL_ENGINE": args.engine,
        "LOG_LEVEL": "INFO",
        "WORKERS": "1",
        "THREADS": "2",
        "NO_TRAFFIC_WARNING_S": "0",
    }
    if args.checkpoint is not None:
        env["MODEL_CHECKPOINT"] = str(args.checkpoint.resolve())
    backend: Backend | None = None
    ok = False
    try:
        print(f"starting Label Studio ({tmp})", flush=True)
        ls.start()
        env.update({"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.personal_access_token()})
        backend = Backend(env, tmp / "backend.log")
        with running(ls, backend):
            print(f"Label Studio {ls.url}; starting the backend (MODEL_ENGINE={args.engine})", flush=True)
            backend.start()
            health = wait_model_loaded(backend)
            client = ls.client()
            project = client.create_project(title="AdaptiveClick")
            client.upload(project, args.image)
            [task] = client.tasks(project)
            ml = client.connect_backend(project, backend.url)
            if ml.get("readable_state") != "Connected":
                raise ScreenshotError(f"Label Studio could not connect the backend: {ml}")
            with Image.open(args.image) as im:
                image = np.asarray(im.convert("RGB"))
            height, width = image.shape[:2]
            data, keypoints = predict_mask(client, ml["id"], task, args.clicks, width, height)
            store_result(client, task["id"], data, keypoints)
            print(
                f"mask from {len(args.clicks)} clicks (model {health.get('model_version')}, "
                f"score {data.get('score', 0):.2f}); opening the labeling page in Chromium",
                flush=True,
            )
            brush = next(r for r in data["result"] if r.get("type") == "brushlabels")
            contrast = screenshot(
                ls, project, task["id"], image, decode_mask(brush), args.out, args.timeout, args.viewport
            )
        ok = True
        print(f"wrote {args.out} (mask contrast on the page {contrast:.0f}/255) in {time.monotonic() - t0:.0f} s")
        return 0
    except (RuntimeError, AssertionError, TimeoutError) as exc:  # ours, the harness's and LSClient's failures
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
