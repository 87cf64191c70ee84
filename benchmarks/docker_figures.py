"""The Docker figures of docs/deployment.md, as a markdown table, from what `make test-docker` measured.

The smoke test (tests/e2e/test_docker_real.py) records its timings, image sizes and container memory in
.cache/docker/figures.json while it runs (it asserts none of them); this prints them with the CPU they were taken on.

    make test-docker && .venv/bin/python benchmarks/docker_figures.py
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[1] / ".cache" / "docker" / "figures.json"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        cores = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("CPU(s)"))
        return f"{name}, {cores} cores"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> int:
    if not FIGURES.exists():
        print(f"{FIGURES} not found: run `make test-docker` first", file=sys.stderr)
        return 1
    figures = json.loads(FIGURES.read_text())
    print(f"CPU: {cpu_name()}\n")
    print("| figure | value |\n|---|---|")
    for key, value in sorted(figures.items()):
        shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else value
        print(f"| {key} | {shown} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
