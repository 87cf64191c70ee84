"""Benchmark of the Label Studio ML backend's own overhead, per click, on a 2-MP image.

    python benchmarks/server.py                       # DiskPredictor stand-in: isolates the server's overhead
    python benchmarks/server.py --engine grabcut
    python benchmarks/server.py --engine adaptiveclick --checkpoint ../shared/golden/tiny_official.pth \
        --sessions 8 --clicks 5

What runs (all on 127.0.0.1):
* a stub Label Studio (threaded HTTP, Token auth) serving a 2-MP JPEG as ``/data/upload/1/<session>.jpg``;
* the backend as ``adaptiveclick serve`` (gunicorn + one uvicorn worker), in its own process;
* clients that send what the labeling UI sends: every smart keypoint so far, on every click, in a body that also
  carries the task's earlier brush annotation.

Phase 1 (sequential): one session of N clicks; click 1 is cold (download + decode + new session), clicks 2..N warm
(one forward each). The split comes from the server's ``Server-Timing`` header: fetch (+decode), model, RLE, and
``overhead = total - model - fetch`` (JSON in/out, click parsing, cache, threshold, RLE; everything but the model
and the download). Phase 2: S concurrent sessions of N clicks (each client waits for its answer before clicking
again, like an annotator); p50/p95 of the client-observed latency and the server's queue wait.

Writes a JSON report (``--out``) and prints a summary. Goal: warm overhead outside the model <= 20 ms.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testkit.ls_harness import Backend, free_port, keypoint  # noqa: E402

TOKEN = "bench-legacy-token"
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>"""


def make_image(shared: Path | None, width: int, height: int) -> bytes:
    """A 2-MP JPEG: a GrabCut image scaled up (in memory; nothing is written into the repo), else synthetic."""
    source = shared / "datasets" / "GrabCut" / "images" / "37073.jpg" if shared else None
    if source is not None and source.exists():
        img = Image.open(source).convert("RGB").resize((width, height), Image.BICUBIC)
    else:
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class StubLabelStudio:
    def __init__(self, jpeg: bytes):
        data = jpeg

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/health":
                    body, status = b'{"status":"UP"}', 200
                elif self.path.startswith("/data/upload/") and self.headers.get("Authorization") == f"Token {TOKEN}":
                    body, status = data, 200
                else:
                    body, status = b"{}", 401
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def click_plan(n: int, width: int, height: int, seed: int) -> list[tuple[int, int, bool]]:
    rng = np.random.default_rng(seed)
    clicks = [(height // 2, width // 2, True)]
    while len(clicks) < n:
        positive = len(clicks) % 2 == 0
        spread = 0.15 if positive else 0.45
        r = int(np.clip(height / 2 + rng.normal(0, spread * height), 0, height - 1))
        c = int(np.clip(width / 2 + rng.normal(0, spread * width), 0, width - 1))
        clicks.append((r, c, positive))
    return clicks


def previous_annotation(width: int, height: int) -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return {
        "id": 1,
        "result": [
            {
                "id": "a1",
                "from_name": "tag",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["Object"]},
            }
        ],
    }


def timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def run_session(
    url: str, session: int, clicks: list[tuple[int, int, bool]], width: int, height: int, annotation: dict
) -> list[dict]:
    http = requests.Session()
    task = {
        "id": 1000 + session,
        "data": {"image": f"/data/upload/1/session{session}.jpg"},
        "annotations": [annotation],
        "predictions": [],
        "drafts": [],
    }
    rows = []
    for n in range(1, len(clicks) + 1):
        regions = [keypoint(r, c, pos, width, height, i) for i, (r, c, pos) in enumerate(clicks[:n])]
        body = {
            "tasks": [task],
            "project": "1.1700000000",
            "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": regions}},
        }
        t0 = time.perf_counter()
        reply = http.post(url + "/predict", json=body, timeout=600)
        rtt = (time.perf_counter() - t0) * 1000
        reply.raise_for_status()
        data = reply.json()
        assert data["results"][0]["result"], data
        t = timing(reply.headers["server-timing"])
        t.update(
            rtt=rtt,
            click=n,
            session=session,
            forwards=int(reply.headers["x-forwards"]),
            overhead=t["total"] - t["model"] - t["fetch"],
        )
        rows.append(t)
    return rows


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(np.floor(k)), int(np.ceil(k))
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(rows: list[dict], keys=("fetch", "model", "rle", "overhead", "queue", "total", "rtt")) -> dict:
    return {
        k: {
            "p50": round(pct([r[k] for r in rows], 0.5), 2),
            "p95": round(pct([r[k] for r in rows], 0.95), 2),
            "mean": round(statistics.fmean(r[k] for r in rows), 2),
        }
        for k in keys
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="disk", help="disk (stand-in, default), grabcut, adaptiveclick")
    ap.add_argument("--checkpoint", default="", help="MODEL_CHECKPOINT for --engine adaptiveclick")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--width", type=int, default=1632)
    ap.add_argument("--height", type=int, default=1224)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--out", default="", help="write the JSON report here")
    args = ap.parse_args(argv)

    shared = Path(os.environ.get("ADAPTIVECLICK_SHARED", REPO.parent / "shared"))
    jpeg = make_image(shared if shared.is_dir() else None, args.width, args.height)
    ls = StubLabelStudio(jpeg)
    engine = {"disk": "testkit.standins:DiskPredictor"}.get(args.engine, args.engine)
    env = {
        "MODEL_ENGINE": engine,
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "THREADS": str(args.threads),
        "WORKERS": "1",
        "LOG_LEVEL": "WARNING",
        "NO_TRAFFIC_WARNING_S": "0",
        "DEVICE": args.device,
        "MODEL_CHECKPOINT": args.checkpoint,
        "PREFETCH_ON_TASK_OPEN": "false",
    }
    log = Path(tempfile.mkdtemp(prefix="bench-server-")) / "backend.log"
    backend = Backend(env, log, port=free_port())
    backend.start()
    try:
        deadline = time.monotonic() + 600
        while not requests.get(backend.url + "/health", timeout=5).json()["model_loaded"]:
            if time.monotonic() > deadline:
                raise TimeoutError("model did not load")
            time.sleep(0.5)
        width, height = args.width, args.height
        annotation = previous_annotation(width, height)
        body_bytes = len(json.dumps(annotation))
        # Warm-up session (imports, first-forward costs), not reported.
        run_session(backend.url, 999, click_plan(2, width, height, 999), width, height, annotation)

        seq = run_session(backend.url, 0, click_plan(args.clicks, width, height, 0), width, height, annotation)
        cold, warm = [r for r in seq if r["click"] == 1], [r for r in seq if r["click"] > 1]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.sessions) as pool:
            futures = [
                pool.submit(
                    run_session,
                    backend.url,
                    s + 1,
                    click_plan(args.clicks, width, height, s + 1),
                    width,
                    height,
                    annotation,
                )
                for s in range(args.sessions)
            ]
            conc = [row for f in futures for row in f.result()]
        wall = time.perf_counter() - t0

        report = {
            "engine": args.engine,
            "image": f"{width}x{height} ({width * height / 1e6:.2f} MP JPEG, {len(jpeg) / 1024:.0f} KiB)",
            "annotation_bytes_in_body": body_bytes,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
            "sequential": {"cold_click": summary(cold), "warm_clicks": summary(warm), "clicks": len(seq)},
            "concurrent": {
                "sessions": args.sessions,
                "clicks_per_session": args.clicks,
                "wall_s": round(wall, 2),
                "clicks_per_s": round(len(conc) / wall, 2),
                "all": summary(conc),
                "warm": summary([r for r in conc if r["click"] > 1]),
            },
            "goal_warm_overhead_ms": 20,
        }
    finally:
        backend.stop()
        ls.close()

    w, c = report["sequential"]["warm_clicks"], report["sequential"]["cold_click"]
    print(f"engine={args.engine} image={report['image']} machine={report['machine']}")
    print(
        f"cold click : fetch+decode {c['fetch']['p50']:.1f} ms, model {c['model']['p50']:.1f} ms, "
        f"rle {c['rle']['p50']:.1f} ms, overhead {c['overhead']['p50']:.1f} ms, server {c['total']['p50']:.1f} ms, "
        f"client {c['rtt']['p50']:.1f} ms"
    )
    print(
        f"warm clicks: model p50 {w['model']['p50']:.1f} ms, rle p50 {w['rle']['p50']:.1f} ms, overhead outside the "
        f"model p50 {w['overhead']['p50']:.1f} / p95 {w['overhead']['p95']:.1f} ms (goal <= 20), "
        f"client-observed minus model p50 {w['rtt']['p50'] - w['model']['p50']:.1f} ms"
    )
    cc = report["concurrent"]
    print(
        f"{cc['sessions']} sessions x {cc['clicks_per_session']} clicks: "
        f"latency p50 {cc['all']['rtt']['p50']:.0f} ms, "
        f"p95 {cc['all']['rtt']['p95']:.0f} ms; queue p50 {cc['all']['queue']['p50']:.0f} ms; "
        f"overhead p50 {cc['all']['overhead']['p50']:.1f} ms (queue excluded: "
        f"{cc['all']['overhead']['p50'] - cc['all']['queue']['p50']:.1f}); {cc['clicks_per_s']} clicks/s"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
