"""Peak memory and time of what one hostile or simply large input can make the backend do: the figures behind
the limits in docs/security.md (not a test).

    python benchmarks/hostile_inputs.py [--cases decode,regions,predict] [--predict-mp 16,64]

Each case runs in a fresh process: its imports and warm-up first, then the peak resident memory (``VmHWM``) is
reset (``/proc/self/clear_refs``) and the case runs; reported are the peak above the resident memory before it
and the wall time. Cases:

* ``decode``: ``decode_image`` of an 8-bit RGB PNG at 16, 32, 48 and 64 MP, a 16-bit grey PNG at 64 MP, and two
  64 MP decodes at once (the large-decode slot makes them take turns);
* ``regions``: a brush RLE whose header claims 4 GB, a 16-byte RLE claiming 16 MP, a real 64 MP brush region, a
  polygon claiming 8000x8000 on a 481x321 frame (refused) and one rasterised at 64 MP, and a 256 MB project export
  of brush regions parsed (``EXPORT_MAX_MB``: the peak scales with it);
* ``predict``: one ``/predict`` click of the shipped starter on an image of the given megapixels (decode, frame,
  model, RLE), through the real app.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MB = 1 << 20


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(run) -> dict:
    """Peak resident memory above the start and wall time of ``run()`` (its result, or the error it raised)."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    t0 = time.perf_counter()
    try:
        outcome = str(run())
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"[:90]
    seconds = time.perf_counter() - t0
    return {"peak_mb": (_status("VmHWM") - before) / MB, "seconds": seconds, "outcome": outcome}


def _png(width: int, height: int, sixteen: bool = False) -> bytes:
    import numpy as np
    from PIL import Image

    ramp = np.arange(width, dtype=np.uint32)[None, :] * 7 + np.arange(height, dtype=np.uint32)[:, None] * 3
    if sixteen:
        image = Image.fromarray((ramp % 65536).astype(np.uint16))
    else:
        image = Image.fromarray(np.repeat((ramp % 256).astype(np.uint8)[..., None], 3, axis=2))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _side(megapixels: float) -> tuple[int, int]:
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    return width, int(megapixels * 1e6 / width)


def case(name: str, arg: str) -> dict:
    from ml_backend.media.fetcher import decode_image

    if name == "decode":
        data = _png(*_side(float(arg)))
        return measure(lambda: decode_image(data, 64_000_000).array.shape)
    if name == "decode16":
        data = _png(*_side(float(arg)), sixteen=True)
        return measure(lambda: decode_image(data, 64_000_000).array.shape)
    if name == "decode2":
        data = _png(*_side(float(arg)))

        def two() -> str:
            threads = [threading.Thread(target=decode_image, args=(data, 64_000_000)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return "two decodes"

        return measure(two)
    from ml_backend.labelstudio.regions import read_region

    if name == "rle-bomb":
        header = (2**32 - 1) << 32 | 7 << 27
        rle = list(header.to_bytes(8, "big")) + [0xFF] * 8
        result = {"type": "brushlabels", "original_width": 481, "original_height": 321,
                  "value": {"rle": rle, "brushlabels": ["x"]}}  # fmt: skip
        return measure(lambda: read_region(result, "bomb", 64_000_000))
    if name == "rle-short":
        header = (4000 * 4000 * 4) << 32 | 7 << 27 | 0x3 << 23 | 0x7 << 15 | 0xF << 11 | 0xF << 7 | 0xF << 3
        result = {"type": "brushlabels", "original_width": 4000, "original_height": 4000,
                  "value": {"rle": list(header.to_bytes(8, "big")) + [0xFF] * 8, "brushlabels": ["x"]}}  # fmt: skip
        return measure(lambda: read_region(result, "short", 64_000_000))
    if name == "rle-real":
        import numpy as np

        from ml_backend.masks.rle import mask2rle

        width, height = _side(float(arg))
        yy, xx = np.ogrid[:height, :width]
        mask = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (height / 3) ** 2).astype(np.uint8) * 255
        result = {"type": "brushlabels", "original_width": width, "original_height": height,
                  "value": {"rle": mask2rle(mask), "brushlabels": ["x"]}}  # fmt: skip
        del mask
        return measure(lambda: int(read_region(result, "real", 64_000_000).mask.sum() > 0))
    if name in ("polygon-other-size", "polygon"):
        width, height = (8000, 8000) if name == "polygon-other-size" else _side(float(arg))
        result = {"type": "polygonlabels", "original_width": width, "original_height": height,
                  "value": {"points": [[5, 5], [95, 8], [60, 95]], "polygonlabels": ["x"]}}  # fmt: skip
        sizes = {(481, 321)} if name == "polygon-other-size" else None
        return measure(lambda: read_region(result, "polygon", 64_000_000, sizes).mask.shape)
    if name == "export-parse":  # a project export of ARG MB of brush RLE (what --project downloads), parsed
        from ml_backend.labelstudio.export import parse_export

        rle = json.dumps(list(range(256)) * 400)  # ~100 KB of JSON per region
        task = '{"id": %d, "data": {"image": "a.png"}, "annotations": [{"id": 1, "result": [{"type": "brushlabels",'
        task += ' "original_width": 10, "original_height": 10, "value": {"rle": ' + rle + ', "brushlabels": ["x"]}}]}]}'
        count = int(float(arg) * MB / len(task))
        data = ("[" + ",".join(task % i for i in range(count)) + "]").encode()
        return measure(lambda: len(parse_export(data)))
    if name == "predict":
        return _predict(float(arg))
    raise SystemExit(f"unknown case {name}")


def _predict(megapixels: float) -> dict:
    from fastapi.testclient import TestClient

    from ml_backend.app import create_app
    from ml_backend.config import Settings
    from ml_backend.media.fetcher import MediaFetcher

    data = _png(*_side(megapixels))
    width, height = _side(megapixels)

    class OneImage(MediaFetcher):
        def fetch(self, url, task_id=None):
            return data

    settings = Settings.from_env({})
    settings.no_traffic_warning_s = 0
    app = create_app(settings, fetcher=OneImage(settings))
    config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"><Label value="O"/>'
              '</BrushLabels><KeyPointLabels name="kp" toName="image" smart="true"><Label value="O" smart="true"/>'
              "</KeyPointLabels></View>")  # fmt: skip

    def body(task: int) -> dict:
        click = {"original_width": width, "original_height": height, "image_rotation": 0, "id": "k",
                 "from_name": "kp", "to_name": "image", "type": "keypointlabels",
                 "value": {"x": 50.0, "y": 50.0, "width": 0.5, "keypointlabels": ["O"]}}  # fmt: skip
        return {"tasks": [{"id": task, "data": {"image": f"/data/upload/{task}.png"}}], "label_config": config,
                "params": {"context": {"result": [click]}}}  # fmt: skip

    with TestClient(app) as client:
        while not app.state.backend.engine.ready.is_set():
            time.sleep(0.1)
        warm = _png(640, 480)
        data_now = data
        OneImage.fetch = lambda self, url, task_id=None: warm if task_id == 1 else data_now
        client.post("/predict", json=body(1))  # the model's first forward, outside the measurement
        result = measure(lambda: client.post("/predict", json=body(2)).status_code)
        result["after_mb"] = _status("VmRSS") / MB
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="decode,regions,predict")
    parser.add_argument("--predict-mp", default="16,64")
    parser.add_argument("--case", nargs=2, metavar=("NAME", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(*args.case)))
        return 0
    groups = set(args.cases.split(","))
    plan = []
    if "decode" in groups:
        plan += [("decode", mp) for mp in ("16", "32", "48", "64")] + [("decode16", "64"), ("decode2", "64")]
    if "regions" in groups:
        plan += [("rle-bomb", "-"), ("rle-short", "-"), ("rle-real", "16"), ("rle-real", "64")]
        plan += [("polygon-other-size", "-"), ("polygon", "64"), ("export-parse", "256")]
    if "predict" in groups:
        plan += [("predict", mp) for mp in args.predict_mp.split(",")]
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores, shared with other work)")
    print("| case | size | peak above start (MB) | time (s) | outcome |")
    print("|---|---|---|---|---|")
    for name, arg in plan:
        done = subprocess.run([sys.executable, __file__, "--case", name, arg], capture_output=True, text=True)
        if done.returncode:
            print(f"| {name} | {arg} | - | - | failed: {done.stderr.strip().splitlines()[-1][:80]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        size = f"{arg} MP" if arg != "-" else ""
        print(f"| {name} | {size} | {r['peak_mb']:.0f} | {r['seconds']:.2f} | {r['outcome'][:70]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
