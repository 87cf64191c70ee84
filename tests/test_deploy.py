"""Deployment files, checked structurally (no Docker engine is needed; none runs on the build machines).

docker-compose.yml (Label Studio + the GPU backend), docker-compose.cpu.yml (merged on top: no GPU reservation),
.env.example, the Dockerfile and .dockerignore. The merge of the two compose files is done here with the
subset of Compose's rules these files use (mappings merge key by key, ``!reset`` removes, ``!override``
replaces); when a Docker Compose v2 binary is on PATH, ``docker compose config`` is checked too.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
COMPOSE_SCALE = ROOT / "docker-compose.scale.yml"
COMPOSE_SCALE_CPU = ROOT / "docker-compose.scale-cpu.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
LS_IMAGE = "heartexlabs/label-studio:1.23.2"


# ---------------------------------------------------------------------------------------------
# Compose loading and merging


class Reset:
    """``!reset``: the key is removed from the merged result."""


class Override:
    """``!override``: the value replaces the base's instead of merging with it."""

    def __init__(self, value):
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


def _construct(node_cls):
    def construct(loader, node):
        if isinstance(node, yaml.MappingNode):
            value = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return Reset() if node_cls is Reset else Override(value)

    return construct


ComposeLoader.add_constructor("!reset", _construct(Reset))
ComposeLoader.add_constructor("!override", _construct(Override))


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def merge(base, override):
    """Compose's merge for the cases these files use."""
    if isinstance(override, Reset):
        return Reset()
    if isinstance(override, Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            merged = merge(base.get(key), value)
            if isinstance(merged, Reset):
                out.pop(key, None)
            else:
                out[key] = merged
        return out
    if isinstance(base, list) and isinstance(override, list):
        return base + [v for v in override if v not in base]
    return override


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def mount_targets(service: dict) -> dict[str, str]:
    """container path -> source, for the short volume syntax."""
    out = {}
    for item in service.get("volumes", []):
        protected = re.sub(r"\$\{[^}]*\}", lambda m: m.group(0).replace(":", "\0"), item)  # ${A:-b}
        parts = [p.replace("\0", ":") for p in protected.split(":")]
        out[parts[1]] = parts[0]
    return out


def container_ports(service: dict) -> set[str]:
    return {str(p).rsplit(":", 1)[-1].split("/")[0] for p in service.get("ports", [])}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def merged_cpu(compose) -> dict:
    return merge(compose, load(COMPOSE_CPU))


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def test_services(compose):
    assert set(compose["services"]) == {"label-studio", "adaptiveclick"}


def test_label_studio_service(compose):
    ls = compose["services"]["label-studio"]
    assert ls["image"] == LS_IMAGE
    env = env_of(ls)
    # the SSRF flags: without them LS 1.23.1+ refuses a backend on compose's private network
    assert env["ML_BLOCK_LOCAL_IP"] == "false" and env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == "/data/files"
    assert "8080" in container_ports(ls)
    mounts = mount_targets(ls)
    data_volume = mounts["/label-studio/data"]
    assert data_volume in compose["volumes"]  # a named volume, declared
    assert "/data/files" in mounts
    assert "/health" in " ".join(ls["healthcheck"]["test"])


def test_label_studio_version_matches_the_e2e_tests():
    script = (ROOT / "scripts" / "install_label_studio.sh").read_text()
    assert re.search(r'LS_VERSION="\$\{LS_VERSION:-([\d.]+)\}"', script).group(1) == LS_IMAGE.split(":")[1]


def test_backend_service(compose):
    ls = compose["services"]["label-studio"]
    backend = compose["services"]["adaptiveclick"]
    build = backend["build"]
    assert (build if isinstance(build, str) else build["context"]) == "."
    assert "9090" in container_ports(backend)
    env = env_of(backend)
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert "${LABEL_STUDIO_API_KEY" in env["LABEL_STUDIO_API_KEY"]  # from .env
    assert env["MODEL_DIR"] == "/data/models"
    # the same host folder is Label Studio's document root and the backend's LOCAL_FILES_DOCUMENT_ROOT
    root = env["LOCAL_FILES_DOCUMENT_ROOT"]
    assert root == env_of(ls)["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    mounts = mount_targets(backend)
    assert mounts[root] == mount_targets(ls)[root]
    assert any(v.endswith(f"{root}:ro") for v in backend["volumes"])  # the backend only reads it
    assert mounts["/data/models"] in compose["volumes"]
    assert backend["depends_on"]["label-studio"]["condition"] == "service_healthy"
    health = " ".join(backend["healthcheck"]["test"])
    assert "/health" in health and "9090" in health


def _reserves_a_gpu(service: dict) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(
        d["driver"] == "nvidia" and "gpu" in d["capabilities"] and (d.get("count") in (1, "all") or d.get("device_ids"))
        for d in devices
    )


def test_backend_gpu_reservation(compose):
    assert len(compose["services"]["adaptiveclick"]["deploy"]["resources"]["reservations"]["devices"]) == 1
    assert _reserves_a_gpu(compose["services"]["adaptiveclick"])


def test_the_fine_tuning_loop_is_on_in_the_compose_stack(compose):
    """The README's loop (Start Training -> a job -> a promoted version served) runs in the default stack: its
    MODEL_DIR turns fine-tuning on, and the server runs the jobs itself (no trainer service there)."""
    from ml_backend.config import Settings
    from ml_backend.finetuning.server import finetune_enabled

    env = env_of(compose["services"]["adaptiveclick"])
    settings = Settings.from_env({"MODEL_DIR": env["MODEL_DIR"]})
    assert finetune_enabled(settings) and settings.finetune_worker == "spawn"
    assert "FINETUNE" not in env and "FINETUNE_WORKER" not in env
    assert "planned" not in COMPOSE.read_text()  # the file once said the loop was not part of it yet


def test_backend_environment_names_are_real_settings(compose):
    """Every variable the compose file sets is read by the backend (no dead, misspelt settings)."""
    sources = "".join((ROOT / path).read_text() for path in ("ml_backend/config.py", "cli/backend.py"))
    for name in env_of(compose["services"]["adaptiveclick"]):
        assert f'"{name}"' in sources, f"{name} is not read by ml_backend"


def test_env_example_defines_every_compose_variable():
    used = set()
    for path in (COMPOSE, COMPOSE_CPU, COMPOSE_SCALE, COMPOSE_SCALE_CPU):
        used |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text()))
    lines = (ROOT / ".env.example").read_text().splitlines()
    defined = {line.split("=", 1)[0] for line in lines if re.match(r"[A-Z_][A-Z0-9_]*=", line)}
    assert used == defined, f"only in compose: {used - defined}; only in .env.example: {defined - used}"
    assert "LABEL_STUDIO_API_KEY" in defined


def test_env_example_has_no_secret_filled_in():
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith(("LABEL_STUDIO_API_KEY=", "BASIC_AUTH_PASS=")):
            assert line.endswith("="), line


# ---------------------------------------------------------------------------------------------
# docker-compose.cpu.yml


def test_cpu_override_uses_compose_reset_tag():
    text = COMPOSE_CPU.read_text()
    assert re.search(r"^\s+deploy: !reset", text, re.M)
    assert "docker compose -f docker-compose.yml -f docker-compose.cpu.yml up" in text


def test_cpu_override_removes_the_gpu_reservation(merged_cpu, compose):
    backend = merged_cpu["services"]["adaptiveclick"]
    assert "deploy" not in backend
    assert env_of(backend)["DEVICE"] == "cpu"
    # everything else is kept
    base = compose["services"]["adaptiveclick"]
    assert {k for k in base if k != "deploy"} == set(backend)
    assert env_of(backend)["LABEL_STUDIO_URL"] == env_of(base)["LABEL_STUDIO_URL"]
    assert merged_cpu["services"]["label-studio"] == compose["services"]["label-studio"]


def test_cpu_override_builds_the_cpu_image(merged_cpu, compose):
    """The CPU stack once ran the 6.75 GB CUDA image; it builds the CUDA-less one under its own tag (so a GPU
    stack's adaptiveclick:latest on the same host is not overwritten)."""
    backend = merged_cpu["services"]["adaptiveclick"]
    args = backend["build"]["args"]
    assert args["TORCH_FROM"] == "debian" and "${CPU_BASE_IMAGE:-debian:sid-slim}" == args["BASE_IMAGE"]
    assert args["FETCH_WEIGHTS"] == compose["services"]["adaptiveclick"]["build"]["args"]["FETCH_WEIGHTS"]
    assert backend["build"]["context"] == "."
    assert backend["image"] == "adaptiveclick:cpu" != compose["services"]["adaptiveclick"]["image"]
    assert set(args) - {"FETCH_WEIGHTS"} <= set(build_args())  # only arguments the Dockerfile declares


def _compose_command() -> list[str] | None:
    """A Docker Compose v2 (>= 2.24, for !reset) command, if one is installed."""
    candidates = [[os.environ["COMPOSE_BIN"]]] if os.environ.get("COMPOSE_BIN") else []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        try:
            out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        match = re.search(r"(\d+)\.(\d+)", out.stdout)
        if out.returncode == 0 and match and (int(match.group(1)), int(match.group(2))) >= (2, 24):
            return cmd
    return None


def test_docker_compose_config_agrees(tmp_path):
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no Docker Compose >= 2.24 installed (set COMPOSE_BIN to one to run this check)")
    env = {**os.environ, "COMPOSE_PROJECT_NAME": "adaptiveclick-test"}

    def config(*files: Path) -> dict:
        args = [a for f in files for a in ("-f", str(f))]
        out = subprocess.run(
            [*cmd, *args, "config", "--format", "json"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    gpu = config(COMPOSE)["services"]["adaptiveclick"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    cpu = config(COMPOSE, COMPOSE_CPU)["services"]["adaptiveclick"]
    assert "deploy" not in cpu and cpu["environment"]["DEVICE"] == "cpu"
    assert cpu["image"] == "adaptiveclick:cpu" and cpu["build"]["args"]["TORCH_FROM"] == "debian"
    assert cpu["build"]["args"]["BASE_IMAGE"] == "debian:sid-slim"
    scale = config(COMPOSE, COMPOSE_CPU, COMPOSE_SCALE, COMPOSE_SCALE_CPU)["services"]
    trainer = scale["adaptiveclick-trainer"]
    assert trainer["image"] == "adaptiveclick:cpu" and "deploy" not in trainer
    assert "9090" not in " ".join(trainer["healthcheck"]["test"])


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def args_of(keyword: str) -> list[str]:
    return [a for k, a in dockerfile_instructions() if k == keyword]


def build_args() -> dict[str, str]:
    out = {}
    for arg in args_of("ARG"):
        name, _, default = arg.partition("=")
        out[name] = default
    return out


def test_dockerfile_base_image_matches_the_torch_pin():
    torch_pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    args = build_args()
    assert args["TORCH_VERSION"] == torch_pin
    image = args["BASE_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-runtime-ubuntu[\d.]+", image)
    assert match, image
    assert match.group(1) == args["TORCH_CUDA"]
    assert args["TORCH_FROM"] == "pypi"  # the default: PyPI's CUDA torch on the CUDA runtime
    assert args_of("FROM") == ["${BASE_IMAGE}"]
    # the build checks the installed torch against both
    assert any("TORCH_VERSION" in r and "torch.version.cuda" in r for r in args_of("RUN"))


def test_dockerfile_has_no_syntax_directive():
    """`# syntax=` makes BuildKit (what `docker compose up --build` uses) pull a frontend image from Docker Hub before
    building: the real run failed wherever Docker Hub was out of reach. Nothing here needs a newer frontend."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    # and none of the features that would need one: heredocs, RUN --mount, COPY --link/--parents/--exclude
    assert "<<" not in " ".join(a for _, a in dockerfile_instructions())
    assert not any(re.search(r"--(mount|link|parents|exclude)\b", a) for k, a in dockerfile_instructions())


def test_weights_are_not_a_volume():
    """An anonymous volume on /app/weights outlives a rebuild: `docker compose up` recreated the container with the
    old volume and kept serving the old weights (seen with a marker file). Only MODEL_DIR is a volume."""
    volumes = [v for a in args_of("VOLUME") for v in json.loads(a)]
    assert volumes == ["/data/models"]
    env = " ".join(args_of("ENV"))
    assert "MODEL_DIR=/data/models" in env


def test_healthcheck_comment_says_what_loading_is():
    """/health answers 503 while the model loads; the comment once said a loading model was healthy."""
    text = DOCKERFILE.read_text()
    comment = text[: text.index("HEALTHCHECK")].rsplit("\n\n", 1)[-1]
    assert "loading is healthy" not in comment and "503" in comment
    assert re.search(r"--start-period=(\d+)s", args_of("HEALTHCHECK")[-1])


def _torch_step(torch_from: str) -> tuple[str, str]:
    """(requirements.txt, the torch check) as the Dockerfile's dependency step makes them for ``torch_from``."""
    run = next(r for r in args_of("RUN") if "/tmp/requirements.txt" in r and "tomllib" in r)
    # the code as bash hands it to python: inside double quotes only \\ \" \$ \` lose their backslash
    codes = [re.sub(r'\\([\\"$`])', r"\1", c) for c in re.findall(r'python -c "((?:[^"\\]|\\.)*)"', run)]
    make_list, check = codes[0], codes[-1]
    args = {**build_args(), "TORCH_FROM": torch_from}
    for name, value in args.items():
        make_list, check = make_list.replace(f"${{{name}}}", value), check.replace(f"${{{name}}}", value)
    make_list = make_list.replace("/tmp/src/pyproject.toml", str(ROOT / "pyproject.toml"))
    out = subprocess.run([sys.executable, "-c", make_list], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout, check


@pytest.mark.parametrize("torch_from", ["pypi", "debian"])
def test_dependency_list_per_torch_source(torch_from):
    """pypi: every dependency with its pin; debian: torch and torchvision come from apt, the rest as pinned."""
    requirements, _ = _torch_step(torch_from)
    names = {re.split(r"[<>=!~ ;\[]", r)[0] for r in requirements.split()}
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + project["optional-dependencies"]["redis"]
    every = {re.split(r"[<>=!~ ;\[]", r)[0] for r in listed}
    assert names == (every if torch_from == "pypi" else every - {"torch", "torchvision"})
    apt = next(r for r in args_of("RUN") if "apt-get install" in r)
    # OpenBLAS beside Debian's torch: without it libblas.so.3 is the reference BLAS (a click 30x slower, measured)
    assert "debian) extra=(python3-torch python3-torchvision libopenblas0-openmp); venv=(--system-site-packages)" in apt
    # Debian's torch is built against Debian's numpy: pip keeps it (a constraint), for debian only
    step = next(r for r in args_of("RUN") if "/tmp/requirements.txt" in r and "tomllib" in r)
    assert '[ "${TORCH_FROM}" = debian ]' in step and "numpy==" in step and "-c /tmp/constraints.txt" in step


@pytest.mark.parametrize(
    "torch_from, version, cuda, ok",
    [
        ("pypi", "2.14.1", "13.0", True),
        ("pypi", "2.14.1", None, False),  # a CPU torch where the CUDA one was asked for
        ("pypi", "2.13.0", "13.0", False),
        ("debian", "2.14.1", None, True),
        ("debian", "2.14.1", "13.0", False),
        ("debian", "2.6.0", None, False),  # an older Debian: the build stops and says why
    ],
)
def test_torch_check_per_torch_source(tmp_path, torch_from, version, cuda, ok):
    _, check = _torch_step(torch_from)
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"__version__ = {version!r}\nclass version:\n    cuda = {cuda!r}\n")
    out = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert (out.returncode == 0) is ok, out.stderr
    if not ok:
        assert "is not torch" in out.stderr


def test_torch_pin_is_the_cuda_build_the_image_expects():
    torch = pytest.importorskip("torch")
    args = build_args()
    if torch.__version__.split("+")[0] != args["TORCH_VERSION"]:
        pytest.skip(f"installed torch {torch.__version__} is not the pinned {args['TORCH_VERSION']}")
    if torch.version.cuda is None:
        pytest.skip("a CPU-only torch build is installed here")
    assert torch.version.cuda.startswith(args["TORCH_CUDA"])


def test_dockerfile_runs_as_non_root():
    users = args_of("USER")
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    position = [k for k, _ in dockerfile_instructions()]
    assert position.index("CMD") > len(position) - 1 - position[::-1].index("USER")
    assert any("useradd" in r and user in r for r in args_of("RUN"))


def test_dockerfile_serves_on_9090_with_a_healthcheck():
    assert args_of("EXPOSE") == ["9090"]
    assert json.loads(args_of("CMD")[-1]) == ["adaptiveclick", "serve"]
    health = args_of("HEALTHCHECK")[-1]
    assert "/health" in health and "curl" not in health and "wget" not in health


def test_dockerfile_installs_the_package_and_ships_the_weights():
    runs = " ".join(args_of("RUN"))
    assert re.search(r"pip install --no-deps /tmp/src\b", runs)
    assert "-e " not in runs  # a regular install, not editable
    copies = args_of("COPY")
    assert any(re.search(r"\bweights/ /app/weights/", c) for c in copies)
    for package in ("model", "ml_backend", "cli"):  # every package pyproject.toml ships, nothing else
        assert any(re.fullmatch(rf"{package}/ /tmp/src/{package}/", c) for c in copies), package
    assert not any("testkit" in c or "tests" in c for c in copies)
    env = " ".join(args_of("ENV"))
    assert "ADAPTIVECLICK_WEIGHTS_DIR=/app/weights" in env and "MODEL_DIR=/data/models" in env
    from ml_backend.config import Settings  # the starter is found there, with no checkpoint configured
    from model.weights import STARTER_WEIGHTS

    settings = Settings.from_env({"ADAPTIVECLICK_WEIGHTS_DIR": "/app/weights"})
    assert settings.base_checkpoint == Path("/app/weights") / STARTER_WEIGHTS.name


def test_dockerfile_downloads_weights_only_on_request():
    assert build_args()["FETCH_WEIGHTS"] == ""
    fetch = [r for r in args_of("RUN") if "FETCH_WEIGHTS" in r]
    assert len(fetch) == 1
    assert '[ -n "${FETCH_WEIGHTS}" ]' in fetch[0] and "adaptiveclick weights fetch" in fetch[0]
    text = DOCKERFILE.read_text()
    assert not re.search(r"\b(curl|wget)\b", text)


def _ignored(pattern_lines: list[str], path: str) -> bool:
    ignored = False
    for pattern in pattern_lines:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a folder excludes what it holds
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore():
    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    for path in (
        ".venv",
        ".cache",
        "runs",
        "results",
        ".git",
        ".pytest_cache",
        ".hypothesis",
        ".env",
        "data",
        "weights/adaptiveclick_base448_sbd.pth.part",
    ):
        assert _ignored(patterns, path), f"{path} is sent to the Docker daemon"
    for path in (
        "pyproject.toml",
        "README.md",
        "model/checkpoint.py",
        "ml_backend/app.py",
        "weights/starter.safetensors",
    ):
        assert not _ignored(patterns, path), f"{path} is needed by the Dockerfile but ignored"
    # and everything the Dockerfile copies is there, weights/ included (a tracked README keeps the folder in a
    # fresh clone before any weights ship: without it `COPY weights/` fails the build)
    for copy in args_of("COPY"):
        sources = [s for s in copy.split() if not s.startswith("--")][:-1]
        for source in sources:
            path = ROOT / source
            # git keeps no empty folder: a folder must hold a file to exist in a fresh checkout
            present = path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*")))
            assert present, f"the Dockerfile copies {source}, which a fresh checkout lacks"


# ---------------------------------------------------------------------------------------------
# The health-check commands, run against a stand-in /health


class _Health(http.server.BaseHTTPRequestHandler):
    body = b"{}"
    status = 200

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        ok = self.path == "/health"
        body = type(self).body if ok else b"{}"
        self.send_response(type(self).status if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def health_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _health_code(test: list[str]) -> str:
    assert test[0] == "CMD" and test[1] in ("python", "python3") and test[2] == "-c"
    return test[3]


def _run(code: str, env: dict | None = None) -> int:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **(env or {})}, capture_output=True, timeout=30
    ).returncode


@pytest.mark.parametrize(
    "status, body, healthy",
    [
        (200, b'{"status": "UP", "model_loaded": true}', True),
        # still loading: unhealthy, which start_period covers (a replica that cannot answer clicks yet)
        (503, b'{"status": "LOADING", "model_loaded": false}', False),
        (503, b'{"status": "ERROR", "model_error": "CheckpointError: missing"}', False),
        (200, b'{"status": "UP", "model_error": "CheckpointError: missing"}', False),  # an older backend
    ],
)
def test_healthchecks_run(health_server, compose, monkeypatch, status, body, healthy):
    monkeypatch.setattr(_Health, "body", body)
    monkeypatch.setattr(_Health, "status", status)
    port = str(health_server.server_address[1])
    docker_cmd = json.loads(re.search(r"CMD (\[.*\])", args_of("HEALTHCHECK")[-1]).group(1))
    assert (_run(_health_code(["CMD", *docker_cmd]), {"PORT": port}) == 0) is healthy
    backend = _health_code(compose["services"]["adaptiveclick"]["healthcheck"]["test"])
    assert (_run(backend.replace("127.0.0.1:9090", f"127.0.0.1:{port}")) == 0) is healthy
    ls = _health_code(compose["services"]["label-studio"]["healthcheck"]["test"])
    assert (_run(ls.replace("localhost:8080", f"127.0.0.1:{port}")) == 0) is (status == 200)  # LS: any 2xx


def test_healthcheck_fails_when_nothing_listens():
    compose_test = load(COMPOSE)["services"]["label-studio"]["healthcheck"]["test"]
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _run(_health_code(compose_test).replace("localhost:8080", f"127.0.0.1:{port}")) != 0


# ---------------------------------------------------------------------------------------------
# docker-compose.scale.yml: replicas behind a proxy, Redis for click states and the job queue


@pytest.fixture(scope="module")
def merged_scale(compose) -> dict:
    return merge(compose, load(COMPOSE_SCALE))


def test_scale_override_adds_redis_proxy_and_trainer(merged_scale, compose):
    assert set(merged_scale["services"]) == set(compose["services"]) | {
        "redis",
        "adaptiveclick-proxy",
        "adaptiveclick-trainer",
    }
    text = COMPOSE_SCALE.read_text()
    assert (
        "docker compose -f docker-compose.yml -f docker-compose.scale.yml up -d --build --scale adaptiveclick=3" in text
    )
    assert merged_scale["services"]["label-studio"] == compose["services"]["label-studio"]
    assert set(merged_scale["volumes"]) == set(compose["volumes"]) | {"redis-data"}


def test_scaled_backend_replicas_can_coexist_and_share_redis(merged_scale):
    services = merged_scale["services"]
    backend = services["adaptiveclick"]
    # --scale N needs replicas without a fixed host port or container name
    assert "ports" not in backend and "container_name" not in backend
    env = env_of(backend)
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", env["SESSION_STORE"])
    assert match and match.group(1) in services and match.group(2) == "6379"
    assert env["FINETUNE_WORKER"] == "external"  # the trainer service runs the jobs, not each replica
    assert backend["depends_on"]["redis"]["condition"] == "service_healthy"
    assert backend["depends_on"]["label-studio"]["condition"] == "service_healthy"  # kept from the base file
    assert backend["deploy"] == load(COMPOSE)["services"]["adaptiveclick"]["deploy"]  # the base's GPU reservation


def test_redis_service_caps_memory_without_evicting_the_queue(merged_scale):
    redis = merged_scale["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2]))
    assert options["--maxmemory-policy"].startswith("volatile-")  # only keys with a TTL (click states) go
    assert "${REDIS_MAXMEMORY" in options["--maxmemory"] and options["--appendonly"] == "yes"
    assert mount_targets(redis)["/data"] in merged_scale["volumes"]
    assert "ping" in redis["healthcheck"]["test"]


def test_trainer_shares_models_queue_and_settings_with_the_replicas(merged_scale):
    services = merged_scale["services"]
    trainer, backend = services["adaptiveclick-trainer"], services["adaptiveclick"]
    assert trainer["command"] == ["adaptiveclick", "worker"] and trainer["image"] == backend["image"]
    assert mount_targets(trainer)["/data/models"] == mount_targets(backend)["/data/models"]
    assert mount_targets(trainer)["/data/files"] == mount_targets(backend)["/data/files"]
    t_env, b_env = env_of(trainer), env_of(backend)
    for name in (
        "SESSION_STORE",
        "MODEL_DIR",
        "LABEL_STUDIO_URL",
        "LABEL_STUDIO_API_KEY",
        "MODEL_CHECKPOINT",
        "LOCAL_FILES_DOCUMENT_ROOT",
    ):
        assert t_env[name] == b_env[name], name
    sources = "".join(
        (ROOT / path).read_text()
        for path in ("ml_backend/config.py", "cli/backend.py", "ml_backend/finetuning/worker.py")
    )
    for name in set(t_env) | set(b_env):
        assert f'"{name}"' in sources, f"{name} is not read by ml_backend"


def test_proxy_publishes_the_one_url_and_spreads_requests(merged_scale):
    proxy = merged_scale["services"]["adaptiveclick-proxy"]
    assert container_ports(proxy) == {"9090"} and "${ADAPTIVECLICK_PORT" in proxy["ports"][0]
    source = mount_targets(proxy)["/etc/nginx/nginx.conf"]
    assert (ROOT / source).resolve() == NGINX_CONF.resolve() and proxy["volumes"][0].endswith(":ro")
    version = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?(-[\w.]+)?", proxy["image"])
    assert version and (int(version.group(1)), int(version.group(2))) >= (1, 27)  # `resolve` in an upstream
    conf = re.sub(r"#.*", "", NGINX_CONF.read_text())
    upstream = re.search(r"upstream\s+(\w[\w-]*)\s*\{([^}]*)\}", conf)
    assert upstream, "no upstream block"
    name, body = upstream.groups()
    assert re.search(r"\bserver\s+adaptiveclick:9090\s+resolve\s*;", body)  # every replica, re-resolved
    assert "zone " in body and re.search(r"\b(least_conn|random)\b", body)
    assert re.search(rf"proxy_pass\s+http://{name}\s*;", conf)
    assert re.search(r"resolver\s+127\.0\.0\.11\b", conf)  # Docker's embedded DNS
    assert re.search(r"\blisten\s+9090\s*;", conf)
    body_mb = int(re.search(r"client_max_body_size\s+(\d+)m\s*;", conf).group(1))
    assert body_mb >= 64  # MAX_REQUEST_MB's default
    assert int(re.search(r"proxy_read_timeout\s+(\d+)s\s*;", conf).group(1)) >= 100  # LS waits 100 s
    # /predict (a click: the same clicks give the same mask, the state is in Redis) is resent to another replica when
    # the connection failed, also after the request went out (a dead replica behind a kept-alive connection: 502
    # without it, seen for real); nothing else is ever sent twice
    locations = dict(re.findall(r"location\s+([^{]+?)\s*\{([^}]*)\}", conf))
    assert set(locations) == {"/", "= /predict"}
    for where, block in locations.items():
        assert re.search(rf"proxy_pass\s+http://{name}\s*;", block), where
        retry = re.search(r"proxy_next_upstream\s+([^;]+);", block).group(1).split()
        assert "error" in retry and ("non_idempotent" in retry) is (where == "= /predict"), where
    assert int(re.search(r"proxy_connect_timeout\s+(\d+)s\s*;", conf).group(1)) <= 10
    assert conf.count("{") == conf.count("}")


def test_trainer_healthcheck_is_its_own(merged_scale):
    """The trainer inherited the image's HEALTHCHECK on :9090, which `adaptiveclick worker` never serves: the real
    stack showed it "unhealthy". It has a check of its own that asks nothing of port 9090."""
    trainer = merged_scale["services"]["adaptiveclick-trainer"]
    test = trainer["healthcheck"]["test"]
    assert "9090" not in " ".join(test) and "/health" not in " ".join(test)
    assert "SESSION_STORE" in _health_code(test)


def test_trainer_healthcheck_runs(merged_scale, redis_server, monkeypatch):
    """Healthy while an RQ worker of this host is registered in Redis; unhealthy before, after, or without Redis."""
    rq = pytest.importorskip("rq")
    code = _health_code(merged_scale["services"]["adaptiveclick-trainer"]["healthcheck"]["test"])
    env = {"SESSION_STORE": redis_server.url}
    assert _run(code, env) == 1  # no worker yet
    connection = redis_server.client()
    worker = rq.Worker([rq.Queue("adaptiveclick-test", connection=connection)], connection=connection)
    worker.register_birth()
    assert _run(code, env) == 0
    worker.register_death()
    assert _run(code, env) == 1
    redis_server.kill()
    assert _run(code, env) != 0


def test_the_trainer_gets_the_gpu_in_the_gpu_stack(merged_scale):
    trainer, backend = merged_scale["services"]["adaptiveclick-trainer"], merged_scale["services"]["adaptiveclick"]
    assert _reserves_a_gpu(trainer) and env_of(trainer)["DEVICE"] == env_of(backend)["DEVICE"]


def test_scale_override_merges_with_the_cpu_overrides(compose):
    merged = merge(merge(merge(compose, load(COMPOSE_CPU)), load(COMPOSE_SCALE)), load(COMPOSE_SCALE_CPU))
    backend, trainer = merged["services"]["adaptiveclick"], merged["services"]["adaptiveclick-trainer"]
    assert "deploy" not in backend and "ports" not in backend
    assert env_of(backend)["DEVICE"] == "cpu" and env_of(backend)["SESSION_STORE"].startswith("redis://")
    assert not any(_reserves_a_gpu(service) for service in merged["services"].values())
    assert env_of(trainer)["DEVICE"] == "cpu" and trainer["command"] == ["adaptiveclick", "worker"]
    assert trainer["image"] == backend["image"] == "adaptiveclick:cpu"  # the trainer runs the replicas' image
    command = "-f docker-compose.scale.yml \\\n#       -f docker-compose.scale-cpu.yml up"
    assert all(command in path.read_text() for path in (COMPOSE_SCALE, COMPOSE_SCALE_CPU))


def test_docker_compose_config_accepts_the_scale_override():
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no Docker Compose >= 2.24 installed (set COMPOSE_BIN to one to run this check)")
    env = {**os.environ, "COMPOSE_PROJECT_NAME": "adaptiveclick-test"}
    out = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "-f", str(COMPOSE_SCALE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    services = json.loads(out.stdout)["services"]
    assert not services["adaptiveclick"].get("ports")
    assert services["adaptiveclick"]["environment"]["SESSION_STORE"] == "redis://redis:6379/0"


def test_image_installs_the_redis_extra():
    """The replicas' SESSION_STORE and the trainer's RQ queue need the redis extra inside the image."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["redis"]
    assert {re.split(r"[<>=!~ \[]", r)[0] for r in extra} >= {"redis", "rq"}
    requirements = [r for r in args_of("RUN") if "/tmp/requirements.txt" in r and "tomllib" in r]
    assert requirements and "['optional-dependencies']['redis']" in requirements[0]


# ---------------------------------------------------------------------------------------------
# serverless/deploy.sh: the image build it starts


def test_cvat_deploy_builds_without_forcing_buildkit(tmp_path):
    """`DOCKER_BUILDKIT=1 docker build` refused to build at all with a docker CLI that has no buildx plugin (the real
    run: "BuildKit is enabled but the buildx component is missing"). The script leaves the builder to docker and
    passes BUILD_ARGS (e.g. the CPU variant) through; stand-in `docker` and `nuctl` record what they are asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "nuctl"):
        (bin_dir / tool).write_text(
            f'#!/bin/sh\necho "{tool} BUILDKIT=${{DOCKER_BUILDKIT:-unset}} $*" >> {tmp_path}/calls\n'
        )
        (bin_dir / tool).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "IMAGE": "adaptiveclick:cpu",
        "BUILD_ARGS": "--build-arg BASE_IMAGE=debian:sid-slim --build-arg TORCH_FROM=debian",
    }
    out = subprocess.run(["bash", str(ROOT / "serverless" / "deploy.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    build = [c for c in calls if c.startswith("docker") and " build " in c]
    assert build == [
        "docker BUILDKIT=unset build --build-arg BASE_IMAGE=debian:sid-slim --build-arg TORCH_FROM=debian "
        "-t adaptiveclick:cpu ."
    ]
    deploy = next(c for c in calls if c.startswith("nuctl") and " deploy " in c)
    assert "--base-image adaptiveclick:cpu" in deploy and "function.yaml" in deploy
    env["SKIP_BUILD"] = "1"
    (tmp_path / "calls").unlink()
    assert subprocess.run(["bash", str(ROOT / "serverless" / "deploy.sh")], env=env).returncode == 0
    assert not any(" build " in c for c in (tmp_path / "calls").read_text().splitlines())
