"""The layering the design card asks for: ``model/`` never imports web code."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_model_package_imports_no_web_code():
    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in (REPO / "model").rglob("*.py")
        if path.name != "__main__.py"
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "web = sorted(m for m in sys.modules if m.split('.')[0] in ('ml_backend', 'fastapi', 'starlette', 'uvicorn', 'gunicorn'))\n"
        "print(','.join(web))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"model/ pulled in web modules: {result.stdout.strip()}"
