"""Build time of both image variants: cold (``--no-cache``: every layer, every download) and after a code change
(the dependency layers cached, the package layer and after rebuilt), and their sizes.

Uses the engine and local bases of testkit/docker_harness.py (starts dockerd when none answers, stops it after);
the figures go to .cache/docker/figures.json beside those of `make test-docker` (benchmarks/docker_figures.py
prints them). About 15 minutes on a 2-core machine.

    .venv/bin/python benchmarks/docker_build.py [--variant cuda|cpu]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit import docker_harness as dh

CONTEXT = ["Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "model", "ml_backend", "cli", "weights"]
VARIANTS = {
    "cuda": ("adaptiveclick:latest", ["--build-arg", f"BASE_IMAGE={dh.BASE_BOOKWORM}"]),
    "cpu": ("adaptiveclick:cpu", ["--build-arg", f"BASE_IMAGE={dh.BASE_SID}", "--build-arg", "TORCH_FROM=debian"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append")
    args = parser.parse_args()
    engine = dh.Engine().start()
    try:
        dh.standins(engine)
        for name in args.variant or sorted(VARIANTS):
            tag, build_args = VARIANTS[name]
            cold = engine.build(tag, dh.REPO, "--no-cache", *build_args)
            with tempfile.TemporaryDirectory(dir=dh.CACHE) as tmp:
                context = Path(tmp)
                for item in CONTEXT:
                    source = dh.REPO / item
                    if source.is_dir():
                        shutil.copytree(source, context / item, ignore=shutil.ignore_patterns("__pycache__"))
                    else:
                        shutil.copy(source, context / item)
                with open(context / "ml_backend" / "__init__.py", "a") as fh:
                    fh.write("# a code change\n")
                changed = engine.build(tag + "-code-change", context, *build_args)
            engine.docker("rmi", tag + "-code-change")
            dh.record(f"build_{name}_cold_s", round(cold))
            dh.record(f"build_{name}_code_change_s", round(changed))
            dh.record(f"size_{name}_mb", round(engine.image_size_mb(tag)))
            print(f"{name}: cold {cold:.0f} s, after a code change {changed:.0f} s, {engine.image_size_mb(tag):.0f} MB")
        engine.docker("image", "prune", "-f")  # the layers --no-cache replaced
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
