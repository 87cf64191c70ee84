"""The layering: ``model/`` (the library) <- ``ml_backend/`` (the serving layer) <- ``cli/`` (the command line).

Each layer imports only the ones below it; the command line is the only place that parses arguments, ``model/``
reads no environment variable, and nothing shipped imports the test support (``testkit``) or the tests. Inside
``ml_backend/``: the platform folders (``labelstudio/``, ``cvat/``) never import each other, the core
(``interactive/``) and the shared parts (``media/``, ``masks/``) import no platform, and serving never reaches the
fine-tuning worker or ``model.training``."""

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("model", "ml_backend", "cli")


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports (relative imports resolved to the package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.relative_to(REPO).parts[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else (node.module or "").split(".")[0])
    return names


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
        "web = ('ml_backend', 'cli', 'fastapi', 'starlette', 'uvicorn', 'gunicorn')\n"
        "web = sorted(m for m in sys.modules if m.split('.')[0] in web)\n"
        "print(','.join(web))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"model/ pulled in web modules: {result.stdout.strip()}"


def test_the_cvat_function_is_a_thin_adapter_on_the_ml_backend():
    """serverless/ (CVAT's nuclio function) sits above ml_backend/: it imports the backend and nothing of the
    model, the command line or the tests directly, and no model code imports it."""
    sources = sorted((REPO / "serverless").rglob("*.py"))
    assert sources, "the CVAT function is missing"
    for path in sources:
        imported = _imported_modules(path) - {"serverless"}
        project = imported & {"model", "ml_backend", "cli", "testkit", "tests"}
        assert project == {"ml_backend"}, f"{path.relative_to(REPO)} imports {sorted(project)}"
    for path in _sources(*SHIPPED):
        assert "serverless" not in _imported_modules(path), f"{path.relative_to(REPO)} imports serverless/"


def test_each_layer_imports_only_the_layers_below_it():
    allowed_above = {"model": {"ml_backend", "cli"}, "ml_backend": {"cli"}, "cli": set()}
    for path in _sources(*SHIPPED):
        layer = path.relative_to(REPO).parts[0]
        imported = _imported_modules(path)
        upward = imported & (allowed_above[layer] | {"testkit", "tests"})
        assert not upward, f"{path.relative_to(REPO)} imports {sorted(upward)}"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its code (imports inside functions included)."""
    modules: dict[str, Path] = {}
    for path in _sources(*SHIPPED):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
                    break
    return graph


def test_no_two_modules_import_each_other():
    """No import cycle of any length among model/, ml_backend/ and cli/ (lazy imports inside functions count)."""
    graph = _import_graph()
    assert (
        graph["cli.backend"] >= {"ml_backend.finetuning.model_store"} and "model.weights" in graph["ml_backend.config"]
    )
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        visiting.append(name)
        for target in sorted(graph[name]):
            assert target not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(target) :] + [target])
            if target not in done:
                visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name)


PLATFORMS = ("ml_backend.labelstudio", "ml_backend.cvat")


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_ml_backend_is_laid_out_by_concern():
    packages = sorted(p.parent.name for p in (REPO / "ml_backend").glob("*/__init__.py"))
    assert packages == ["cvat", "finetuning", "interactive", "labelstudio", "masks", "media"]
    shell = sorted(p.stem for p in (REPO / "ml_backend").glob("*.py") if p.stem != "__init__")
    assert shell == ["app", "config", "errors", "jsonbody"], "the top holds the server shell only"


def test_platform_folders_never_import_each_other():
    for name, targets in _import_graph().items():
        for platform in PLATFORMS:
            if _in(name, platform):
                other = [t for t in targets if any(_in(t, p) for p in PLATFORMS if p != platform)]
                assert not other, f"{name} imports another platform: {other}"


def test_the_core_and_the_shared_parts_import_no_platform():
    neutral = ("ml_backend.interactive", "ml_backend.media", "ml_backend.masks")
    for name, targets in _import_graph().items():
        if any(_in(name, package) for package in neutral):
            platform = [t for t in targets if any(_in(t, p) for p in PLATFORMS)]
            assert not platform, f"{name} imports a platform: {platform}"
        if _in(name, "ml_backend.media") or _in(name, "ml_backend.masks"):
            core = [t for t in targets if _in(t, "ml_backend.interactive") or _in(t, "ml_backend.finetuning")]
            assert not core, f"{name} (shared by everyone) imports {core}"


def test_serving_never_reaches_the_finetuning_worker_or_training_code():
    """What ``serve`` and the CVAT function import, followed through every import (lazy ones too), never loads the
    worker (it trains in its own process) or ``model.training``."""
    graph = _import_graph()
    reached, pending = set(), ["ml_backend.app", "ml_backend.cvat.interactor"]
    while pending:
        for target in graph[pending.pop()] - reached:
            reached.add(target)
            pending.append(target)
    assert "ml_backend.labelstudio.adapter" in reached and "ml_backend.finetuning.server" in reached
    training = sorted(m for m in reached if _in(m, "ml_backend.finetuning.worker") or _in(m, "model.training"))
    assert not training, f"serving imports training code: {training}"


def test_only_the_command_line_parses_arguments():
    offenders = [p.relative_to(REPO) for p in _sources("model", "ml_backend") if "argparse" in _imported_modules(p)]
    assert not offenders, f"argument parsing outside cli/: {offenders}"


def test_the_library_reads_no_environment_variable():
    offenders = []
    for path in _sources("model"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"model/ reads the environment (settings belong to ml_backend.config / cli): {offenders}"


def test_tests_and_tools_do_not_import_each_other_or_patch_the_path_into_tests():
    for path in _sources("tests"):
        imported = _imported_modules(path)
        assert not {n for n in imported if n.startswith("test_")}, f"{path.relative_to(REPO)} imports a test module"
    for path in _sources("benchmarks", "scripts"):
        text = path.read_text()
        assert '"tests"' not in text and "from tests" not in text, f"{path.relative_to(REPO)} reaches into tests/"


def test_which_checkpoint_is_decided_in_one_place():
    """MODEL_CHECKPOINT / ADAPTIVECLICK_CHECKPOINT are read by ml_backend.config only; everyone else asks
    ml_backend.finetuning.model_store.served_checkpoint (the fallback used to be written four times)."""
    readers = []
    for path in _sources(*SHIPPED, "scripts", "benchmarks"):
        text = path.read_text()
        if re.search(r"environ(\.get)?\(?\[?\s*[\"'](MODEL_CHECKPOINT|ADAPTIVECLICK_CHECKPOINT)[\"']", text):
            readers.append(str(path.relative_to(REPO)))
        if re.search(r"env\.get\(\s*[\"'](MODEL_CHECKPOINT|ADAPTIVECLICK_CHECKPOINT)[\"']", text):
            readers.append(str(path.relative_to(REPO)))
    assert sorted(set(readers)) == ["ml_backend/config.py"]


def test_serving_needs_no_training_code():
    """model/ reads as network / inference / training / evaluation: the network and the predictor import nothing
    from model.training, so serving never loads the trainer, its data pipeline or its criterion."""
    graph = _import_graph()
    training = {name for name in graph if name == "model.training" or name.startswith("model.training.")}
    assert {"model.training.trainer", "model.training.data", "model.training.finetune"} <= training
    inference = {
        name for name in graph if name.startswith("model.") and name.split(".")[1] not in ("training", "evaluation")
    }
    reached = set()
    pending = sorted(inference)
    while pending:
        name = pending.pop()
        for target in graph[name] - reached:
            reached.add(target)
            pending.append(target)
    assert not reached & training, f"inference imports training code: {sorted(reached & training)}"


def test_no_two_tracked_paths_differ_only_in_case():
    """A clone on a case-insensitive file system (macOS, Windows) would fold them into one (model/TRAINING.md
    beside the model/training/ package did)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    prefixes = {
        str(Path(*Path(name).parts[:depth])) for name in tracked for depth in range(1, len(Path(name).parts) + 1)
    }
    folded: dict[str, set[str]] = {}
    for prefix in prefixes:
        folded.setdefault(prefix.lower(), set()).add(prefix)
    clashes = sorted(sorted(names) for names in folded.values() if len(names) > 1)
    assert not clashes, f"paths that differ only in case: {clashes}"


def test_platform_folders_never_import_each_other_and_the_core_imports_none():
    """Label Studio's and CVAT's adapters meet only in what they share (the core, masks, media, fine-tuning): neither
    reaches into the other, and the platform-neutral core and shared layers import neither (lazy imports count).
    The fine-tuning worker is the one place that picks a platform's annotation source."""
    graph = _import_graph()
    platforms = ("ml_backend.labelstudio", "ml_backend.cvat")
    for name, targets in graph.items():
        mine = next((p for p in platforms if name == p or name.startswith(p + ".")), None)
        for target in targets:
            theirs = next((p for p in platforms if target == p or target.startswith(p + ".")), None)
            if theirs is None or theirs == mine:
                continue
            assert mine is None, f"{name} (a platform) imports {target} (another platform)"
            shared = name.startswith(("ml_backend.interactive", "ml_backend.masks", "ml_backend.media"))
            assert not shared, f"{name} (platform-neutral) imports {target}"
