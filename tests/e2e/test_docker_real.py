"""The image and both compose stacks on a real Docker engine: opt-in (``make test-docker``; RUN_DOCKER=1).

What a user does, on this machine: build the project image from the project's Dockerfile (both variants: PyPI's
CUDA torch and Debian's CPU torch), ``docker run`` it, ``docker compose up`` the Label Studio stack with the CPU
override and ``.env`` from ``.env.example``, the scale-out stack, and the build ``serverless/deploy.sh`` starts.
The machine-only parts (the engine, local stand-ins for images nothing can pull here, the firewall rule that keeps
containers talking only to each other) are testkit/docker_harness.py's. Every wait is bounded, ports are published
on 127.0.0.1 only, and everything started here is stopped and removed (volumes included); the images stay tagged so
the next run is warm. Figures are recorded in .cache/docker/figures.json, never asserted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from testkit.ls_harness import E2E_IMAGES, LSClient, keypoint

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.environ.get("RUN_DOCKER") != "1", reason="opt-in: make test-docker (RUN_DOCKER=1)"),
]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "smoke-token-0123456789abcdef"
CUDA_TAG, CPU_TAG = "adaptiveclick:latest", "adaptiveclick:cpu"
PROJECT = "adaptiveclick-smoke"  # compose project name: a user's own `adaptiveclick` project is never touched
# A short fine-tuning job for the smoke test (the product's defaults train for minutes).
FAST_FINETUNE = {
    "FINETUNE_STEPS": "2",
    "FINETUNE_BATCH_SIZE": "1",
    "FINETUNE_MAX_CLICKS": "2",
    "FINETUNE_NICE": "0",
    "MODEL_WATCH_S": "2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_label_config() -> str:
    """The labeling config the README tells a user to paste."""
    text = (ROOT / "README.md").read_text()
    return re.search(r"```xml\n(\s*<View>.*?</View>)\n\s*```", text, re.S).group(1)


def gt_mask(shared_dir: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(shared_dir / "datasets" / "GrabCut" / "masks" / (name.rsplit(".", 1)[0] + ".png")))


def interior(region: np.ndarray) -> tuple[int, int]:
    import cv2

    dist = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(row), int(col)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def decode(region: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0


# ---------------------------------------------------------------------------------------------
# Engine, firewall, images


@pytest.fixture(scope="module")
def engine():
    from testkit import docker_harness as dh

    eng = dh.Engine().start()
    try:
        with dh.firewall():
            yield eng
    finally:
        eng.stop()


@pytest.fixture(scope="module")
def images(engine):
    """The stand-ins, then both variants of the project image from the project's Dockerfile."""
    from testkit import docker_harness as dh

    dh.standins(engine)
    variants = {
        CUDA_TAG: ["--build-arg", f"BASE_IMAGE={dh.BASE_BOOKWORM}"],  # the CUDA runtime's stand-in: plain Debian
        CPU_TAG: ["--build-arg", f"BASE_IMAGE={dh.BASE_SID}", "--build-arg", "TORCH_FROM=debian"],
    }
    for tag, args in variants.items():
        name = "cuda" if tag == CUDA_TAG else "cpu"
        took = engine.build(tag, ROOT, *args)  # cold and code-change builds: benchmarks/docker_build.py
        dh.record(f"build_{name}_in_smoke_s", round(took))
        dh.record(f"size_{name}_mb", round(engine.image_size_mb(tag)))
    return variants


# ---------------------------------------------------------------------------------------------
# docker run


def _host_predict(image: Path, click: tuple[int, int], out: Path) -> np.ndarray:
    cmd = [str(ROOT / ".venv" / "bin" / "adaptiveclick"), "predict", str(image), "--click", f"{click[0]},{click[1]}"]
    subprocess.run([*cmd, "--device", "cpu", "--out", str(out)], check=True, timeout=300, capture_output=True)
    return np.asarray(Image.open(out)) > 0


@pytest.mark.parametrize("tag", [CUDA_TAG, CPU_TAG])
def test_docker_run(engine, images, tag, shared_dir, tmp_path):
    """/health UP with the model loaded; `predict` in the container = the host's mask; the HEALTHCHECK turns
    healthy; no volume on /app/weights."""
    from testkit import docker_harness as dh

    name = E2E_IMAGES["upload"]
    image = shared_dir / "datasets" / "GrabCut" / "images" / name
    click = interior(gt_mask(shared_dir, name) == 1)
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the container's user (uid 10001) writes the mask here
    port = free_port()
    container = f"adaptiveclick-smoke-run-{tag.split(':')[1]}"
    engine.docker("rm", "-f", container, check=False)
    start = time.monotonic()
    engine.docker(
        "run", "-d", "--name", container, "-p", f"127.0.0.1:{port}:9090", "-e", "DEVICE=cpu",
        "-e", "LOCAL_FILES_DOCUMENT_ROOT=/in", "-v", f"{image}:/in/{name}:ro", "-v", f"{out}:/out", tag,
    )  # fmt: skip
    key = "cuda" if tag == CUDA_TAG else "cpu"
    try:
        up = dh.wait_http(f"http://127.0.0.1:{port}/health", 180, lambda r: r.status_code == 200)
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        assert health["status"] == "UP" and health["model_loaded"], health
        dh.record(f"run_{key}_health_up_s", round(up, 1))
        dh.record(f"run_{key}_idle_mb", dh.stats(engine, [container])[container])
        t0 = time.monotonic()
        engine.docker(
            "exec", container, "adaptiveclick", "predict", f"/in/{name}", "--click", f"{click[0]},{click[1]}",
            "--device", "cpu", "--out", "/out/mask.png", timeout=300,
        )  # fmt: skip
        dh.record(f"run_{key}_first_mask_s", round(time.monotonic() - start, 1))
        dh.record(f"run_{key}_predict_exec_s", round(time.monotonic() - t0, 1))
        inside = np.asarray(Image.open(out / "mask.png")) > 0
        host = _host_predict(image, click, tmp_path / "host.png")
        agreement = iou(inside, host)
        dh.record(f"run_{key}_iou_vs_host", round(agreement, 4))
        dh.record(f"run_{key}_pixels_differing", int((inside != host).sum()))
        if tag == CUDA_TAG:  # the same torch build as the host's: the same mask
            assert np.array_equal(inside, host), f"IoU {agreement:.4f}"
        else:  # Debian's torch (another BLAS): the same mask up to a few border pixels
            assert agreement > 0.99, agreement
        dh.record(f"run_{key}_iou_vs_gt", round(iou(inside, gt_mask(shared_dir, name) == 1), 3))
        assert iou(inside, gt_mask(shared_dir, name) == 1) > 0.5  # one click of the starter model
        mounts = json.loads(engine.docker("inspect", "-f", "{{json .Mounts}}", container).stdout)
        assert "/app/weights" not in {m["Destination"] for m in mounts}
        dh.record(f"run_{key}_click_ms", _click_times(port, name, click, inside.shape))
        deadline = time.monotonic() + 200  # first check 30 s after start, then every 30 s
        while (state := engine.docker("inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()) != (
            "healthy"
        ):
            assert state in ("starting", "healthy") and time.monotonic() < deadline, state
            time.sleep(3)
        dh.record(f"run_{key}_healthy_s", round(time.monotonic() - start, 1))
    finally:
        engine.docker("rm", "-f", "-v", container, check=False)


def _click_times(port: int, name: str, click: tuple[int, int], shape: tuple[int, int]) -> dict[str, float]:
    """Milliseconds of a new session's first click and the median of 6 more clicks on it (a served click)."""
    h, w = shape
    url = f"http://127.0.0.1:{port}/predict"
    times = []
    for n in range(7):
        clicks = [keypoint(click[0], click[1], True, w, h, 0)]
        clicks += [keypoint(click[0] + 2 * i, click[1] + 2 * i, True, w, h, i) for i in range(1, n + 1)]
        body = {
            "tasks": [{"id": 99, "data": {"image": f"/data/local-files/?d={name}"}}],
            "project": "1.1",
            "label_config": readme_label_config(),
            "params": {"context": {"result": clicks}},
        }
        t0 = time.perf_counter()
        reply = requests.post(url, json=body, timeout=120)
        times.append((time.perf_counter() - t0) * 1000)
        assert reply.status_code == 200 and reply.json()["results"][0]["result"], reply.text[:500]
    return {"first": round(times[0]), "median_next": round(float(np.median(times[1:])))}


# ---------------------------------------------------------------------------------------------
# The Label Studio stack: docker-compose.yml + docker-compose.cpu.yml, .env from .env.example


def make_env(tmp_path: Path, files_dir: Path, **extra: str) -> Path:
    """.env from .env.example, as the README says: copied, then the token and the ports filled in."""
    values = {
        "LABEL_STUDIO_API_KEY": TOKEN,
        "LABEL_STUDIO_PORT": f"127.0.0.1:{free_port()}",  # published on loopback only
        "ADAPTIVECLICK_PORT": f"127.0.0.1:{free_port()}",
        "FILES_DIR": str(files_dir),
        **extra,
    }
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={values.pop(key)}" if key in values and "=" in line else line)
    lines += [f"{k}={v}" for k, v in values.items()]
    path = tmp_path / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


def smoke_override(tmp_path: Path, services: list[str]) -> str:
    """The smoke test's additions to the stacks: a short fine-tuning job, and builds on the host network (the
    firewall rule keeps containers, a build's RUN steps included, off everything but each other)."""
    import yaml

    override = {s: {"environment": FAST_FINETUNE} for s in services}
    override["adaptiveclick"]["build"] = {"network": "host"}
    path = tmp_path / "docker-compose.smoke.yml"
    path.write_text(yaml.safe_dump({"services": override}))
    return str(path)


@pytest.fixture(scope="module")
def files_dir(shared_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("files")
    (root / "images").mkdir()
    for name in E2E_IMAGES.values():
        shutil.copy(shared_dir / "datasets" / "GrabCut" / "images" / name, root / "images" / name)
    root.chmod(0o755)
    return root


def _ls(compose) -> LSClient:
    return LSClient(compose.port("label-studio", 8080), TOKEN)


def _project_with_tasks(client: LSClient, files_dir: Path, backend_url: str) -> tuple[int, dict, dict]:
    project = client.create_project("docker smoke", readme_label_config())
    client.upload(project, files_dir / "images" / E2E_IMAGES["upload"])
    client.add_local_storage(project, Path("/data/files/images"))
    client.import_tasks(project, [{"data": {"image": f"/data/local-files/?d=images/{E2E_IMAGES['local']}"}}])
    ml = client.connect_backend(project, backend_url)
    assert ml["readable_state"] == "Connected", ml
    tasks = {}
    for task in client.tasks(project):
        kind = next(k for k, n in E2E_IMAGES.items() if task["data"]["image"].endswith(n))
        tasks[kind] = task
    return project, ml, tasks


def _click(client: LSClient, ml: dict, task: dict, shared_dir: Path, kind: str) -> float:
    """One smart-keypoint click through Label Studio's API; returns the mask's IoU with the ground truth."""
    name = E2E_IMAGES[kind]
    gt = gt_mask(shared_dir, name) == 1
    h, w = gt.shape
    reply = client.interactive(ml["id"], task["id"], [keypoint(*interior(gt), True, w, h)])
    assert "errors" not in reply, reply
    [region] = reply["data"]["result"]
    assert region["type"] == "brushlabels"
    return iou(decode(region), gt)


def test_label_studio_stack(engine, images, files_dir, shared_dir, tmp_path):
    from testkit import docker_harness as dh

    env = make_env(tmp_path, files_dir)
    files = ["docker-compose.yml", "docker-compose.cpu.yml", smoke_override(tmp_path, ["adaptiveclick"])]
    compose = dh.Compose(engine, files, PROJECT, env)
    compose("down", "-v", "--remove-orphans", check=False)
    try:
        start = time.monotonic()
        compose("up", "-d", "--build", timeout=1800)  # BuildKit through compose, as a user runs it
        healthy = compose.wait_healthy(["label-studio", "adaptiveclick"], 400)
        dh.record("ls_stack_up_to_healthy_s", round(time.monotonic() - start, 1))
        dh.record("ls_stack_healthy_after_up_s", round(healthy, 1))
        services = ["label-studio", "adaptiveclick"]
        dh.record("ls_stack_mb_idle", dh.stats(engine, [c for s in services for c in compose.containers(s)]))
        # the URL the README gives, from Label Studio's container
        probe = "import urllib.request as r; print(r.urlopen('http://adaptiveclick:9090/health', timeout=10).read())"
        assert b"UP" in compose("exec", "-T", "label-studio", "python3", "-c", probe).stdout.encode()
        client = _ls(compose)
        project, ml, tasks = _project_with_tasks(client, files_dir, "http://adaptiveclick:9090")
        ious = {kind: _click(client, ml, tasks[kind], shared_dir, kind) for kind in ("upload", "local")}
        dh.record("ls_stack_up_to_first_mask_s", round(time.monotonic() - start, 1))
        dh.record("ls_stack_ious", {k: round(v, 3) for k, v in ious.items()})
        assert min(ious.values()) > 0.5, ious
        containers = [c for s in ("label-studio", "adaptiveclick") for c in compose.containers(s)]
        dh.record("ls_stack_mb_after_2_clicks", dh.stats(engine, containers))
        backend = compose.containers("adaptiveclick")[0]
        mounts = json.loads(engine.docker("inspect", "-f", "{{json .Mounts}}", backend).stdout)
        assert "/app/weights" not in {m["Destination"] for m in mounts}

        # fine-tune on the two tasks' ground truth, then down/up: the volume keeps the version and it stays current
        for kind, task in tasks.items():
            gt = gt_mask(shared_dir, E2E_IMAGES[kind]) == 1
            client.call("POST", f"/api/tasks/{task['id']}/annotations", json={"task": task["id"], "result": [
                _brush(gt)]})  # fmt: skip
        base_version = requests.get(compose.port("adaptiveclick", 9090) + "/health", timeout=5).json()["model_version"]
        client.call("POST", f"/api/ml/{ml['id']}/train", expect=(200, 201))
        version = _wait_version(compose, base_version, 600)
        dh.record("ls_stack_finetune_job_s", round(time.monotonic() - start, 1))
        compose("down", timeout=300)
        t0 = time.monotonic()
        compose("up", "-d", timeout=600)
        compose.wait_healthy(["label-studio", "adaptiveclick"], 400)
        dh.record("ls_stack_down_up_healthy_s", round(time.monotonic() - t0, 1))
        health = requests.get(compose.port("adaptiveclick", 9090) + "/health", timeout=5).json()
        assert health["model_version"] == version, (health, version)
        client = _ls(compose)
        assert client.call("GET", f"/api/projects/{project}")["id"] == project  # Label Studio's volume kept too
        assert _click(client, ml, tasks["upload"], shared_dir, "upload") > 0.5
        gt = gt_mask(shared_dir, E2E_IMAGES["upload"]) == 1
        h, w = gt.shape
        rng = np.random.default_rng(0)
        points = np.argwhere(gt)
        t0 = time.monotonic()
        for i in range(20):  # 20 clicks on one task, as an annotator refining a mask
            r, c = points[rng.integers(len(points))]
            clicks = [keypoint(*interior(gt), True, w, h, 0), keypoint(int(r), int(c), True, w, h, i + 1)]
            assert "errors" not in client.interactive(ml["id"], tasks["upload"]["id"], clicks)
        dh.record("ls_stack_20_clicks_s", round(time.monotonic() - t0, 1))
        dh.record("ls_stack_mb_after_20_clicks", dh.stats(engine, [c for s in services for c in compose.containers(s)]))
    finally:
        compose("down", "-v", "--remove-orphans", timeout=300, check=False)


def _brush(mask: np.ndarray) -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    h, w = mask.shape
    return {
        "id": "gt",
        "from_name": "tag",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": w,
        "original_height": h,
        "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Object"]},
    }


def _wait_version(compose, base_version: str, timeout: float) -> str:
    url = compose.port("adaptiveclick", 9090) if "adaptiveclick-proxy" not in compose.config()["services"] else None
    url = url or compose.port("adaptiveclick-proxy", 9090)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = requests.get(url + "/health", timeout=5).json().get("model_version")
        if version and version != base_version:
            return version
        time.sleep(3)
    jobs = compose("exec", "-T", "adaptiveclick", "adaptiveclick", "versions", "jobs", check=False)
    raise TimeoutError(f"no new version within {timeout:.0f} s:\n{jobs.stdout[-3000:]}{jobs.stderr[-2000:]}")


# ---------------------------------------------------------------------------------------------
# The scale-out stack: 3 replicas behind nginx, click states and the job queue in Redis, the trainer


SCALE_FILES = [
    "docker-compose.yml",
    "docker-compose.cpu.yml",
    "docker-compose.scale.yml",
    "docker-compose.scale-cpu.yml",
]


def _predict_body(project: str, task_id: int, clicks: list[dict]) -> dict:
    return {
        "tasks": [{"id": task_id, "data": {"image": f"/data/local-files/?d=images/{E2E_IMAGES['local']}"}}],
        "project": project,
        "label_config": readme_label_config(),
        "params": {"context": {"result": clicks}},
    }


def _post_in(engine, container: str, body: dict) -> dict:
    """POST /predict on a replica's own loopback (docker exec): which replica answers is chosen here."""
    code = (
        "import json, sys, urllib.request as r; req = r.Request('http://127.0.0.1:9090/predict', "
        "data=sys.stdin.buffer.read(), headers={'Content-Type': 'application/json'}); "
        "resp = r.urlopen(req, timeout=120); "
        "print(json.dumps({'status': resp.status, 'forwards': resp.headers['X-Forwards'], "
        "'cache': resp.headers.get('X-Cache'), 'body': json.load(resp)}))"
    )
    out = engine.docker("exec", "-i", container, "python", "-c", code, input=json.dumps(body), timeout=180)
    return json.loads(out.stdout)


def test_scale_out_stack(engine, images, files_dir, shared_dir, tmp_path):
    from testkit import docker_harness as dh

    env = make_env(tmp_path, files_dir)
    override = smoke_override(tmp_path, ["adaptiveclick", "adaptiveclick-trainer"])
    compose = dh.Compose(engine, [*SCALE_FILES, override], PROJECT + "-scale", env)
    compose("down", "-v", "--remove-orphans", check=False)
    try:
        start = time.monotonic()
        compose("up", "-d", "--build", "--scale", "adaptiveclick=3", timeout=1800)
        compose.wait_healthy(["label-studio", "redis", "adaptiveclick", "adaptiveclick-trainer"], 500)
        dh.record("scale_stack_up_to_healthy_s", round(time.monotonic() - start, 1))
        replicas = compose.containers("adaptiveclick")
        assert len(replicas) == 3
        every = ["label-studio", "redis", "adaptiveclick", "adaptiveclick-proxy", "adaptiveclick-trainer"]
        dh.record("scale_stack_mb_idle", dh.stats(engine, [c for s in every for c in compose.containers(s)]))

        # one session, each click answered by another replica: one forward per click, the state from Redis
        gt = gt_mask(shared_dir, E2E_IMAGES["local"]) == 1
        h, w = gt.shape
        clicks = [keypoint(*interior(gt), True, w, h, 0)]
        replies = []
        for i, replica in enumerate(replicas):
            reply = _post_in(engine, replica, _predict_body("7.1", 4242, clicks))
            assert reply["status"] == 200 and reply["forwards"] == "1", (i, reply)
            replies.append(reply)
            predicted = decode(reply["body"]["results"][0]["result"][0])
            missed = gt & ~predicted
            spill = predicted & ~gt
            if spill.sum() > missed.sum():
                clicks.append(keypoint(*interior(spill), False, w, h, i + 1))
            else:
                clicks.append(keypoint(*interior(missed), True, w, h, i + 1))
        assert all("store" in (r["cache"] or "") for r in replies[1:]), [r["cache"] for r in replies]
        dh.record("scale_stack_cache_headers", [r["cache"] for r in replies])

        proxy = compose.port("adaptiveclick-proxy", 9090)
        for i in range(20):  # 20 clicks through the proxy, spread over the replicas
            body = _predict_body("7.1", 5000 + i // 5, [keypoint(*interior(gt), True, w, h, 0)] + clicks[1 : i % 5])
            assert requests.post(proxy + "/predict", json=body, timeout=120).status_code == 200
        dh.record("scale_stack_mb_after_20_clicks", dh.stats(engine, [c for s in every for c in compose.containers(s)]))

        # a session started on replica 0, the proxy's kept-alive connections warm to every replica, then replica 0
        # killed mid-session: the next click through the proxy (Label Studio's way) is answered by another replica
        # with one forward, the state from Redis
        first = _post_in(engine, replicas[0], _predict_body("7.1", 4343, clicks[:1]))
        assert first["status"] == 200 and first["forwards"] == "1"
        for _ in range(6):
            warm = requests.post(proxy + "/predict", json=_predict_body("7.1", 4242, clicks[:1]), timeout=120)
            assert warm.status_code == 200
        engine.docker("kill", replicas[0])
        reply = requests.post(proxy + "/predict", json=_predict_body("7.1", 4343, clicks[:2]), timeout=120)
        assert reply.status_code == 200 and reply.headers["X-Forwards"] == "1", reply.headers
        assert "store" in reply.headers.get("X-Cache", ""), reply.headers
        dh.record("scale_stack_after_kill_cache", reply.headers.get("X-Cache"))
        # Known, not fixed: in the ~10 s until nginx re-resolves the replicas, a request that tries the dead one first
        # can get 502/504 ("no live upstreams"; seen twice). What follows starts after that.
        time.sleep(12)
        # Label Studio through the proxy, and "Start Training" runs on the trainer
        client = _ls(compose)
        project, ml, tasks = _project_with_tasks(client, files_dir, "http://adaptiveclick-proxy:9090")
        assert _click(client, ml, tasks["local"], shared_dir, "local") > 0.5
        for kind, task in tasks.items():
            mask = gt_mask(shared_dir, E2E_IMAGES[kind]) == 1
            client.call("POST", f"/api/tasks/{task['id']}/annotations", json={"task": task["id"], "result": [
                _brush(mask)]})  # fmt: skip
        base = requests.get(proxy + "/health", timeout=5).json()["model_version"]
        client.call("POST", f"/api/ml/{ml['id']}/train", expect=(200, 201))
        _wait_version(compose, base, 600)
        trainer_log = compose("logs", "adaptiveclick-trainer").stdout
        assert "promoted" in trainer_log or "Job OK" in trainer_log, trainer_log[-3000:]
        assert compose.health(compose.containers("adaptiveclick-trainer")[0]) == "healthy"
    finally:
        proxy_log = compose("logs", "--tail", "40", "adaptiveclick-proxy", check=False)
        print("adaptiveclick-proxy log:\n" + proxy_log.stdout[-4000:] + proxy_log.stderr[-1000:])
        compose("down", "-v", "--remove-orphans", timeout=300, check=False)


# ---------------------------------------------------------------------------------------------
# CVAT: the build serverless/deploy.sh starts (nuclio itself cannot run here)


def test_cvat_function_build(engine, images, tmp_path):
    """serverless/deploy.sh with a stand-in `nuctl` that records its arguments: the script's own image build runs for
    real, then nuclio's part of the build (the function's handler on that image, as root) is done by hand."""
    from testkit import docker_harness as dh

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "nuctl-calls"
    (bin_dir / "nuctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "nuctl").chmod(0o755)
    env = {**engine.env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "IMAGE": "adaptiveclick:cvat-smoke"}
    env["BUILD_ARGS"] = f"--network host --build-arg BASE_IMAGE={dh.BASE_BOOKWORM}"
    t0 = time.monotonic()
    out = subprocess.run(
        ["bash", "serverless/deploy.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    dh.record("cvat_deploy_build_s", round(time.monotonic() - t0, 1))
    deploy = next(line for line in calls.read_text().splitlines() if line.startswith("deploy"))
    assert "--base-image adaptiveclick:cvat-smoke" in deploy and "function.yaml" in deploy
    function = tmp_path / "function"
    function.mkdir()
    shutil.copy(ROOT / "serverless" / "adaptiveclick" / "nuclio" / "main.py", function / "main.py")
    (function / "Dockerfile").write_text(
        "FROM adaptiveclick:cvat-smoke\nUSER root\nCOPY main.py /opt/nuclio/main.py\nWORKDIR /opt/nuclio\n"
        "RUN python -c 'import main; print(main.handler)'\n"
    )
    engine.build("adaptiveclick:cvat-function-smoke", function)
    engine.docker("rmi", "adaptiveclick:cvat-function-smoke", "adaptiveclick:cvat-smoke", check=False)
