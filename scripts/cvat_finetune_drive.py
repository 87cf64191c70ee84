"""Drive the CVAT fine-tuning loop against a real CVAT, and record it for ``tests/test_cvat_recorded.py``.

What it does (each step printed, the run fails at the first step that does not happen):

1. logs in to CVAT, creates a read-only personal access token for the worker, a project, and a task of synthetic
   frames (two objects each) in jobs of 3 frames;
2. starts ``adaptiveclick serve`` (``MODEL_DIR`` in a temporary folder, ``CVAT_URL``, the token,
   ``CVAT_WEBHOOK_SECRET``, a few fine-tuning steps) behind a recorder that keeps each webhook's exact bytes;
3. adds the project's webhook (``update:job``, the secret), pings it, uploads every frame's objects as a ``mask``
   shape and a ``polygon`` shape (and a rectangle, which must be left out), then completes job 1 and moves job 2 to
   acceptance;
4. waits for the webhooks, the fine-tuning job(s) and the promotion or refusal, then for ``/health`` to serve the
   promoted version, and calls the interactor route the way CVAT does;
5. exports the same annotations with ``adaptiveclick export --format coco-cvat`` and imports the zip into a new task
   of the real CVAT (format "COCO 1.0"), then reads the task's annotations back: IoU and boxes per object;
6. writes the recording: webhook bodies and signatures, the API replies the worker reads (jobs, annotations, media
   meta, frames), the job record and manifest, and the import's result.

    .venv/bin/python scripts/cvat_finetune_drive.py --cvat http://127.0.0.1:7000 --user admin --password ... \\
        --out tests/e2e/recorded/cvat-2.73.0-finetune.json

It talks to the CVAT given and to a backend it starts on 127.0.0.1; nothing else. It never deletes anything it did
not create.
"""

from __future__ import annotations

import argparse
import base64
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ml_backend.cvat.annotations import decode_box_rle  # noqa: E402
from ml_backend.cvat.interactor import encode_cvat_mask  # noqa: E402
from ml_backend.masks.polygons import polygons_to_mask  # noqa: E402
from ml_backend.masks.rle import mask2rle  # noqa: E402
from testkit.ls_harness import Backend, free_port  # noqa: E402
from testkit.proxy import ForwardingProxy  # noqa: E402

SECRET = "adaptiveclick-webhook-secret-0123456789"
H, W = 120, 160
FRAMES = 6


def synthetic_frames(n: int = FRAMES) -> list[tuple[str, bytes, np.ndarray, list[tuple[float, float]]]]:
    """(file name, PNG bytes, the blob's mask, the box's corners) per frame: a smooth background, a bright blob
    (annotated as a mask) and a dark box (annotated as a polygon), moving from frame to frame. Small and
    deterministic, so the recording carries the frames themselves."""
    out = []
    yy, xx = np.mgrid[:H, :W]
    for i in range(n):
        image = np.stack([40 + xx * 0.4, 60 + yy * 0.5, 90 + (xx + yy) * 0.2], -1).astype(np.uint8)
        cx, cy, rx, ry = 45 + 6 * i, 55 + 3 * i, 24 - i, 16 + i
        blob = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        image[blob] = (235, 225, 120)
        x0, y0, x1, y1 = 95 + 2 * i, 20 + 4 * i, 145, 70 + 4 * i
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        box = polygons_to_mask([np.array(corners, float)], H, W)
        image[box] = (30, 35, 140)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", optimize=True)
        out.append((f"frame_{i:02d}.png", buf.getvalue(), blob & ~box, corners))
    return out


class WebhookRecorder:
    """Receives CVAT's webhooks, keeps their exact bytes and signature, forwards them to the backend."""

    def __init__(self, target: str):
        self.target, self.calls, recorder = target, [], self
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                keep = ("Content-Type", "X-Signature-256", "User-Agent")
                headers = {k: self.headers[k] for k in keep if self.headers.get(k) is not None}
                reply = requests.post(recorder.target, data=raw, headers=headers, timeout=30)
                with recorder.lock:
                    recorder.calls.append(
                        {
                            "headers": headers,
                            "body": raw.decode("utf-8"),
                            "status": reply.status_code,
                            "reply": reply.json() if reply.content else None,
                            "received": time.time(),
                        }
                    )
                self.send_response(reply.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cvat/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, event: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if json.loads(c["body"]).get("event") == event]


class Forwarder:
    """Stands briefly where CVAT expects its nuclio dashboard and passes CVAT's calls to the backend, so CVAT's own
    interactor route (``POST /api/lambda/functions/<name>``) is answered by the backend this run promoted."""

    def __init__(self, port: int, target: str):
        self.calls: list[str] = []
        self.proxy = ForwardingProxy(
            target, self._note, port=port, drop=("host", "content-length", "authorization"), timeout_s=120
        ).start()

    def _note(self, method: str, path: str, headers: Any, raw: bytes, reply: requests.Response) -> None:
        self.calls.append(f"{method} {path} -> {reply.status_code}")

    def stop(self) -> None:
        self.proxy.stop()


class Cvat:
    """CVAT's REST API as the admin (legacy key from /api/auth/login)."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False
        reply = self.session.post(f"{self.url}/api/auth/login", json={"username": user, "password": password})
        reply.raise_for_status()
        self.session.headers["Authorization"] = f"Token {reply.json()['key']}"

    def call(self, method: str, path: str, ok=(200, 201, 202, 204), **kwargs: Any) -> Any:
        reply = self.session.request(method, self.url + path, timeout=120, **kwargs)
        if reply.status_code not in ok:
            raise RuntimeError(f"{method} {path} -> {reply.status_code}: {reply.text[:500]}")
        return reply.json() if reply.content and "json" in reply.headers.get("Content-Type", "") else reply

    def wait_request(self, rq_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("GET", f"/api/requests/{rq_id}")
            if status.get("status") in ("finished", "failed"):
                return status
            time.sleep(1)
        raise TimeoutError(f"CVAT request {rq_id} did not finish in {timeout:.0f} s")


def step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def shapes_for(frame: int, blob: np.ndarray, corners, labels: dict[str, int]) -> list[dict]:
    points = encode_cvat_mask(blob).tolist()
    polygon = [float(c) for xy in corners for c in xy]
    common = {"frame": frame, "occluded": False, "z_order": 0, "rotation": 0.0, "attributes": [], "source": "manual"}
    return [
        dict(common, type="mask", label_id=labels["blob"], points=points),
        dict(common, type="polygon", label_id=labels["box"], points=polygon),
        dict(common, type="rectangle", label_id=labels["box"], points=[1.0, 1.0, 9.0, 9.0]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cvat", required=True, help="CVAT's URL, e.g. http://127.0.0.1:7000")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--out", required=True, help="the recording (tests/e2e/recorded/cvat-2.73.0-finetune.json)")
    parser.add_argument("--checkpoint", default="", help="MODEL_CHECKPOINT (default: the starter)")
    parser.add_argument(
        "--export-tolerance", default="", help="--tolerance of the export (default: POLYGON_TOLERANCE_PX)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the fine-tuning job(s)")
    parser.add_argument("--keep", help="keep MODEL_DIR and logs in this folder")
    parser.add_argument(
        "--nuclio-port",
        type=int,
        default=0,
        help="where this CVAT calls its nuclio dashboard (CVAT_NUCLIO_PORT): when nothing listens there, stand there "
        "for a moment and ask CVAT's own interactor route for a mask from the promoted version",
    )
    parser.add_argument(
        "--cvat-env",
        default="",
        help="CVAT's environment script (the no-Docker setup's env.sh): when the REST import fails, import with "
        "CVAT's own code through scripts/cvat_import_probe.py",
    )
    args = parser.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="cvat-drive-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "models"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cvat = Cvat(args.cvat, args.user, args.password)
    about = cvat.call("GET", "/api/server/about")
    step(f"CVAT {about.get('version')} at {args.cvat}")
    token = cvat.call("POST", "/api/auth/access_tokens", json={"name": f"adaptiveclick-{stamp}", "read_only": True})
    pat = token["value"]
    step(f"read-only personal access token {token['id']} for the worker ({pat.split('.')[0]}.***)")

    env = {
        "MODEL_ENGINE": "adaptiveclick",
        "MODEL_DIR": str(model_dir),
        "DEVICE": "cpu",
        "CVAT_URL": args.cvat,
        "CVAT_ACCESS_TOKEN": pat,
        "CVAT_WEBHOOK_SECRET": SECRET,
        "FINETUNE_STEPS": "4",
        "FINETUNE_BATCH_SIZE": "2",
        "FINETUNE_MAX_CLICKS": "5",
        "FINETUNE_VAL_MAX_INSTANCES": "8",
        "FINETUNE_THREADS": "1",
        "FINETUNE_NICE": "0",
        "FINETUNE_MIN_INSTANCE_PX": "50",
        "MODEL_WATCH_S": "0.5",
        "WORKERS": "1",
        "THREADS": "4",
        "NO_TRAFFIC_WARNING_S": "0",
    }
    if args.checkpoint:
        env["MODEL_CHECKPOINT"] = args.checkpoint
    backend = Backend(env, work / "serve.log").start(timeout=300)
    recorder = WebhookRecorder(backend.url + "/cvat/webhook")
    step(f"adaptiveclick serve at {backend.url} (log {work / 'serve.log'}), webhooks via {recorder.url}")
    record: dict[str, Any] = {"cvat": about.get("version"), "secret": SECRET, "frames": {}, "api": {}}
    try:
        frames = synthetic_frames()
        project = cvat.call(
            "POST",
            "/api/projects",
            json={"name": f"adaptiveclick-ft-{stamp}", "labels": [{"name": "blob"}, {"name": "box"}]},
        )
        task = cvat.call(
            "POST", "/api/tasks", json={"name": f"frames-{stamp}", "project_id": project["id"], "segment_size": 3}
        )
        files = {f"client_files[{i}]": (name, data, "image/png") for i, (name, data, _, _) in enumerate(frames)}
        started = cvat.call(
            "POST",
            f"/api/tasks/{task['id']}/data",
            data={"image_quality": 95, "sorting_method": "lexicographical"},
            files=files,
        )
        status = cvat.wait_request(started["rq_id"])
        assert status["status"] == "finished", status
        labels = {
            lab["name"]: lab["id"]
            for lab in cvat.call("GET", f"/api/labels?project_id={project['id']}&page_size=100")["results"]
        }
        jobs = sorted(
            cvat.call("GET", f"/api/jobs?task_id={task['id']}&page_size=100")["results"], key=lambda j: j["start_frame"]
        )
        step(f"project {project['id']}, task {task['id']}: {len(frames)} frames in jobs {[j['id'] for j in jobs]}")

        hook = cvat.call(
            "POST",
            "/api/webhooks",
            json={
                "target_url": recorder.url,
                "type": "project",
                "project_id": project["id"],
                "events": ["update:job"],
                "secret": SECRET,
                "content_type": "application/json",
                "enable_ssl": False,
                "is_active": True,
                "description": "adaptiveclick fine-tuning",
            },
        )
        ping = cvat.call("POST", f"/api/webhooks/{hook['id']}/ping")
        step(f"webhook {hook['id']} -> {recorder.url}; ping delivered with status {ping.get('status_code')}")

        for job in jobs:
            shapes = []
            for frame in range(job["start_frame"], job["stop_frame"] + 1):
                _, _, blob, corners = frames[frame]
                shapes += shapes_for(frame, blob, corners, labels)
            cvat.call(
                "PUT",
                f"/api/jobs/{job['id']}/annotations",
                json={"version": 0, "tags": [], "shapes": shapes, "tracks": []},
            )
        step(f"uploaded {3 * len(frames)} shapes (a mask, a polygon and a rectangle per frame)")

        t0 = time.monotonic()
        cvat.call("PATCH", f"/api/jobs/{jobs[0]['id']}", json={"state": "completed"})
        cvat.call("PATCH", f"/api/jobs/{jobs[1]['id']}", json={"stage": "acceptance"})
        step(f"job {jobs[0]['id']} -> completed, job {jobs[1]['id']} -> stage acceptance")

        deadline = time.monotonic() + 600

        def triggered() -> list[dict]:
            return [h for h in recorder.events("update:job") if (h["reply"] or {}).get("finetune") == "recorded"]

        while len(triggered()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        hooks = recorder.events("update:job")
        if len(triggered()) < 2:
            raise RuntimeError(
                f"only {len(hooks)} update:job webhook(s) arrived in 10 min: is CVAT's webhooks worker running?"
            )
        step(
            f"{len(hooks)} webhooks in {time.monotonic() - t0:.1f} s: "
            + ", ".join(f"{h['status']} {h['reply'].get('finetune')}" for h in hooks)
        )

        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            records = [json.loads(p.read_text()) for p in sorted((model_dir / "jobs").glob("job-*.json"))]
            if records and all(r["state"] in ("done", "skipped", "failed", "interrupted") for r in records):
                break
            time.sleep(2)
        else:
            raise TimeoutError("the fine-tuning job(s) did not finish")
        for r in records:
            step(
                f"{r['id']} ({r['platform']} project {r['project']}, {r['reason']}): {r['state']} "
                f"in {r.get('seconds')} s: {r.get('message')}"
            )
        record["jobs"] = records
        promoted = [r for r in records if r.get("promoted")]
        if promoted:
            version = promoted[-1]["version"]
            record["manifest"] = json.loads((model_dir / "versions" / version / "manifest.json").read_text())
            deadline = time.monotonic() + 120
            while requests.get(backend.url + "/health", timeout=5).json().get("model_version") != version:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"/health never served {version}")
                time.sleep(0.5)
            name, data, blob, _ = frames[0]
            rows, cols = np.nonzero(blob)
            body = {
                "image": base64.b64encode(data).decode(),
                "pos_points": [[float(cols.mean()), float(rows.mean())]],
                "neg_points": [],
                "obj_bbox": [],
            }
            reply = requests.post(
                backend.url + "/api/function_invocations",
                json=body,
                headers={"x-nuclio-function-name": "pth-adaptiveclick", "x-nuclio-path": "/"},
                timeout=120,
            )
            shape = reply.json()["shapes"][0]
            iou = _iou(decode_box_rle(shape["points"], W, H, "reply"), blob)
            health = requests.get(backend.url + "/health", timeout=5).json()
            record["interactor_after"] = {
                "model_version": health["model_version"],
                "status": reply.status_code,
                "iou": iou,
            }
            step(
                f"/health serves {health['model_version']}; the interactor's next answer: {reply.status_code}, "
                f"IoU {iou:.3f} with the blob"
            )
            if args.nuclio_port:
                record["cvat_lambda_after"] = _through_cvat(cvat, args.nuclio_port, backend.url, task, jobs[0], blob)
        versions = subprocess.run(
            [sys.executable, "-m", "cli", "versions", "list", "--model-dir", str(model_dir)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        record["versions_list"] = versions.stdout
        step("adaptiveclick versions:\n" + versions.stdout.rstrip())

        # What the worker reads, as the worker reads it (the token, the same calls): for the replayed tests.
        reader = requests.Session()
        reader.headers["Authorization"] = f"Bearer {pat}"

        def get(path: str) -> Any:
            reply = reader.get(args.cvat.rstrip("/") + path, timeout=60)
            reply.raise_for_status()
            return reply.json()

        record["api"]["jobs"] = get(f"/api/jobs?project_id={project['id']}&page_size=100&page=1")
        for job in jobs:
            for suffix in ("", "/annotations", "/data/meta"):
                record["api"][f"/api/jobs/{job['id']}{suffix}"] = get(f"/api/jobs/{job['id']}{suffix}")
            for frame in range(job["start_frame"], job["stop_frame"] + 1):
                data = reader.get(
                    f"{args.cvat.rstrip('/')}/api/jobs/{job['id']}/data",
                    params={"type": "frame", "number": frame, "quality": "original"},
                    timeout=60,
                ).content
                record["frames"][f"{job['id']}/{frame}"] = base64.b64encode(data).decode()
        record["webhooks"] = [dict(c, received=None) for c in recorder.calls]
        record["ids"] = {
            "project": project["id"],
            "task": task["id"],
            "jobs": [j["id"] for j in jobs],
            "webhook": hook["id"],
        }
        record["cvat_import"] = _export_and_import(
            cvat, project["id"], frames, work, stamp, args.cvat_env, args.export_tolerance
        )
    finally:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        step(f"recording written to {args.out}")
        backend.stop()
        recorder.server.shutdown()
    return 0


def _through_cvat(cvat: Cvat, port: int, backend: str, task: dict, job: dict, blob: np.ndarray) -> dict:
    """CVAT's interactor route on frame 0, answered by the backend through a forwarder on CVAT's dashboard port."""
    try:
        forwarder = Forwarder(port, backend)
    except OSError as exc:
        step(f"port {port} is taken ({exc}): CVAT's own interactor route not tried")
        return {"skipped": f"port {port} is taken"}
    try:
        rows, cols = np.nonzero(blob)
        body = {
            "task": task["id"],
            "job": job["id"],
            "frame": 0,
            "pos_points": [[float(cols.mean()), float(rows.mean())]],
        }
        reply = cvat.session.post(
            f"{cvat.url}/api/lambda/functions/pth-adaptiveclick", json=dict(body, neg_points=[]), timeout=120
        )
    finally:
        forwarder.stop()
    result: dict[str, Any] = {"status": reply.status_code, "calls": forwarder.calls}
    if reply.status_code == 200:
        shapes = reply.json().get("shapes") or []
        result["iou"] = _iou(decode_box_rle(shapes[0]["points"], W, H, "cvat"), blob) if shapes else 0.0
    served = requests.get(backend + "/health", timeout=5).json()["model_version"]
    result["served"] = served
    step(
        f"CVAT's own interactor route: {reply.status_code} via {forwarder.calls}, served by {served}, "
        f"IoU {result.get('iou')}"
    )
    return result


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b)))


def _export_and_import(
    cvat: Cvat, project_id: int, frames, work: Path, stamp: str, env_sh: str, tolerance: str
) -> dict:
    """The frames' objects as a Label Studio export -> ``adaptiveclick export --format coco-cvat`` -> a new task of
    the real CVAT (its frames: the export's images) -> ``COCO 1.0`` import -> the task's annotations read back."""
    images = work / "ls-images"
    images.mkdir(exist_ok=True)
    tasks = []
    for i, (name, data, blob, corners) in enumerate(frames):
        (images / name).write_bytes(data)
        brush = {
            "type": "brushlabels",
            "original_width": W,
            "original_height": H,
            "value": {"format": "rle", "rle": mask2rle(blob.astype(np.uint8) * 255), "brushlabels": ["blob"]},
        }
        poly = {
            "type": "polygonlabels",
            "original_width": W,
            "original_height": H,
            "value": {"points": [[100 * x / W, 100 * y / H] for x, y in corners], "polygonlabels": ["box"]},
        }
        tasks.append(
            {
                "id": i + 1,
                "data": {"image": f"/data/upload/1/{name}"},
                "annotations": [{"id": i + 1, "result": [brush, poly]}],
            }
        )
    (work / "ls-export.json").write_text(json.dumps(tasks))
    out = work / "coco-cvat"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "export",
            "--from-json",
            str(work / "ls-export.json"),
            "--format",
            "coco-cvat",
            "--out",
            str(out),
            "--images",
            str(images),
        ]
        + (["--tolerance", tolerance] if tolerance else []),
        check=True,
        cwd=REPO,
    )
    archive = work / "coco-cvat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(out.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(out).as_posix())
    coco = json.loads((out / "annotations" / "instances_default.json").read_text())
    result: dict[str, Any] = {"objects": len(coco["annotations"])}
    task = cvat.call("POST", "/api/tasks", json={"name": f"import-{stamp}", "project_id": project_id})
    result["task"] = task["id"]
    exported = sorted((out / "images" / "default").iterdir())
    files = {f"client_files[{i}]": (p.name, p.read_bytes(), "image/png") for i, p in enumerate(exported)}
    started = cvat.call(
        "POST",
        f"/api/tasks/{task['id']}/data",
        data={"image_quality": 95, "sorting_method": "lexicographical"},
        files=files,
    )
    cvat.wait_request(started["rq_id"])
    reply = cvat.session.post(
        f"{cvat.url}/api/tasks/{task['id']}/annotations",
        params={"format": "COCO 1.0"},
        files={"annotation_file": ("dataset.zip", archive.read_bytes(), "application/zip")},
        timeout=120,
    )
    result["import_status"] = reply.status_code
    title = next((line for line in reply.text.splitlines() if "<title>" in line or "Error" in line), reply.text[:200])
    result["import_reply"] = title.strip()[:300]
    step(f"REST import of the COCO 1.0 zip into task {task['id']}: {reply.status_code} {result['import_reply']}")
    if reply.status_code == 202 and "rq_id" in reply.json():
        status = cvat.wait_request(reply.json()["rq_id"])
        result["import_request"] = {k: status.get(k) for k in ("status", "message")}
        step(f"import request: {status.get('status')} {status.get('message', '')[:300]}")
    elif env_sh:  # the endpoint is broken in this CVAT: CVAT's own import code, run in a process of its own
        probe = REPO / "scripts" / "cvat_import_probe.py"
        command = f'source "{env_sh}" && cd "$CVAT_SRC" && "$CVAT_VENV/bin/python" "{probe}" "{archive}" {task["id"]}'
        run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600)
        result["import_probe"] = {"returncode": run.returncode, "output": (run.stdout + run.stderr)[-600:]}
        step(f"CVAT's import code (scripts/cvat_import_probe.py): rc {run.returncode} {run.stdout.strip()[-200:]}")
    annotations = cvat.call("GET", f"/api/tasks/{task['id']}/annotations")
    result["annotations"] = annotations
    labels = {lab["id"]: lab["name"] for lab in cvat.call("GET", f"/api/labels?project_id={project_id}")["results"]}
    originals = {}
    for i, (name, _, blob, corners) in enumerate(frames):
        originals[(f"{i + 1}_{Path(name).stem}.png", "blob")] = blob
        originals[(f"{i + 1}_{Path(name).stem}.png", "box")] = polygons_to_mask([np.array(corners, float)], H, W)
    meta = cvat.call("GET", f"/api/tasks/{task['id']}/data/meta")
    result["comparison"] = _compare(annotations, coco, meta, labels, originals)
    summary = {k: v for k, v in result["comparison"].items() if k != "rows"}
    step(f"read back from CVAT: {summary}")
    return result


def _compare(annotations: dict, coco: dict, meta: dict, labels: dict[int, str], originals: dict) -> dict:
    """Per exported object: the IoU of the shape CVAT holds with the export's segmentation and with the annotation it
    was exported from (both rasterised by pixel centres), and whether CVAT's box of it equals its mask's box."""
    names = [f["name"] for f in meta.get("frames", [])]
    shapes: dict[tuple, list[tuple[str, np.ndarray, list]]] = {}
    for shape in annotations.get("shapes", []):
        key = (shape["frame"], labels.get(shape["label_id"]))
        if shape["type"] == "mask":
            mask = decode_box_rle(shape["points"], W, H, "imported")
        elif shape["type"] == "polygon":
            mask = polygons_to_mask([np.array(shape["points"], float).reshape(-1, 2)], H, W)
        else:
            mask = None
        shapes.setdefault(key, []).append((shape["type"], mask, shape))
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    rows_out = []
    for image in coco["images"]:
        frame = names.index(image["file_name"]) if image["file_name"] in names else -1
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            label = categories[ann["category_id"]]
            seg = ann["segmentation"]
            if isinstance(seg, list):
                exported = polygons_to_mask([np.array(p, float).reshape(-1, 2) for p in seg], H, W)
            else:
                exported = np.repeat(np.arange(len(seg["counts"])) % 2, seg["counts"]).reshape(W, H).T.astype(bool)
            held = [(m, sh) for kind, m, sh in shapes.get((frame, label), []) if m is not None]
            mask, shape = max(held, key=lambda h: _iou(h[0], exported), default=(np.zeros((H, W), bool), None))
            boxes = [sh for kind, _, sh in shapes.get((frame, label), []) if kind == "rectangle"]
            box = next((b for b in boxes if shape is not None and b["group"] == shape["group"]), None)
            rows, cols = np.nonzero(mask)
            tight = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1] if rows.size else None
            x, y, w, h = ann["bbox"]
            rows_out.append(
                {
                    "image": image["file_name"],
                    "label": label,
                    "iou_with_export": round(_iou(mask, exported), 4),
                    "iou_with_annotation": round(_iou(mask, originals[(image["file_name"], label)]), 4),
                    "cvat_box": [round(v, 2) for v in box["points"]] if box else None,
                    "mask_box": tight,
                    "coco_bbox_corners": [x, y, x + w, y + h],
                }
            )
    return {
        "objects": len(rows_out),
        "min_iou_with_export": min((r["iou_with_export"] for r in rows_out), default=0.0),
        "min_iou_with_annotation": min((r["iou_with_annotation"] for r in rows_out), default=0.0),
        "boxes_equal_their_masks": sum(r["cvat_box"] == r["mask_box"] == r["coco_bbox_corners"] for r in rows_out),
        "rows": rows_out,
    }


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
