"""The model side: which predictor to build, loaded once per process, used by one thread at a time.

``MODEL_ENGINE``:
* ``adaptiveclick`` (default): ``model.checkpoint.load_model`` + ``model.predictor.Predictor``;
* ``grabcut``: the classical baseline ``model.evaluation.grabcut.GrabCutPredictor``;
* ``package.module:factory``: any callable returning a ``model.interactive.InteractivePredictor`` (a
  ``StatefulPredictor`` replays click prefixes for free), for experiments and tests.

Nothing here touches torch or CUDA at import time: the model is loaded in the serving process (after any
fork), by :meth:`Engine.load`.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..finetuning.model_store import BASE, served_checkpoint

if TYPE_CHECKING:
    from model.interactive import InteractivePredictor

log = logging.getLogger("adaptiveclick.backend")


def _file_tag(path: Path) -> str:
    """A short, stable content tag of a checkpoint (sha256 prefix; size+name for very large files)."""
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if size > 1 << 30:
        return f"{size:x}"[-8:]
    from model.weights import sha256_file  # no torch

    return sha256_file(path)[:8]


def base_version_name(settings: Settings, engine: str | None = None) -> str:
    """The base model's version name, stable across restarts and workers: engine + checkpoint name + content tag
    (``MODEL_VERSION`` overrides it)."""
    if settings.model_version:
        return settings.model_version
    engine = engine or settings.model_engine
    if engine == "grabcut":
        return "grabcut-baseline"
    if engine == "adaptiveclick":
        path = settings.base_checkpoint
        return f"adaptiveclick-{path.stem}-{_file_tag(path)}"
    return engine.replace(":", ".")


class Engine:
    """Builds predictors for sessions; ``lock`` serialises all model work of this process."""

    def __init__(
        self,
        settings: Settings,
        factory: Callable[[], InteractivePredictor] | None = None,
        name: str | None = None,
        version: str | None = None,
    ):
        self.settings = settings
        self.name = name or settings.model_engine
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.error: str | None = None
        self.device = "cpu"
        self.refine = "none"  # the predictor's refinement spec (model.refine), reported by /health
        self._factory: Callable[[], InteractivePredictor] | None = factory
        self._version = version or settings.model_version or ""
        self.model_class = "AdaptiveClick" if self.name == "adaptiveclick" else self.name
        self.load_seconds = 0.0
        self.generation = 0  # bumped by every hot swap (sessions of an older generation are dropped)
        # What is served (model_store.served_checkpoint): (a fine-tuned version from MODEL_DIR, or BASE, checkpoint).
        self._served = (BASE, settings.base_checkpoint) if factory is not None else served_checkpoint(settings)
        if factory is not None:
            self.ready.set()
        self.base_version = self._version or base_version_name(settings, self.name)
        if not version:
            self._version = self._version_of(self._served)

    def _version_of(self, served: tuple[str, Path]) -> str:
        return self.base_version if served[0] == BASE else served[0]

    @property
    def model_version(self) -> str:
        return self._version

    def _checkpoint_path(self) -> Path:
        return self._served[1]

    def load(self) -> None:
        """Build the predictor factory (loads the network once). Safe to call from a background thread."""
        if self.ready.is_set():
            return
        t0 = time.perf_counter()
        try:
            self._factory = self._build_factory()
            self.error = None
        except Exception as exc:  # reported by /health and every /predict
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("could not load the %s model: %s", self.name, self.error)
        finally:
            self.load_seconds = time.perf_counter() - t0
            self.ready.set()
        if self.error is None:
            log.info("model %s ready on %s in %.1f s", self.model_version, self.device, self.load_seconds)

    def refresh(self) -> bool:
        """Hot swap: serve the version ``MODEL_DIR/current`` (or ``MODEL_VERSION_PIN``) names when it changed.

        The new network is loaded outside the lock; predictors are swapped under ``lock`` and ``generation`` is
        bumped so cached sessions of the old model are not reused. A version that fails to load is logged and the
        current model kept. Returns True when the served model changed."""
        if self.name != "adaptiveclick" or not self.ready.is_set() or self._factory is None:
            return False
        target = served_checkpoint(self.settings)
        if target == self._served:
            return False
        previous = self._served
        t0 = time.perf_counter()
        try:
            self._served = target
            factory = self._build_factory()
        except Exception as exc:
            self._served = previous
            log.error(
                "could not load model version %s (%s: %s): still serving %s",
                self._version_of(target),
                type(exc).__name__,
                exc,
                self._version,
            )
            return False
        with self.lock:
            self._factory = factory
            self._version = self._version_of(target)
            self.generation += 1
        log.info("now serving model version %s (loaded in %.1f s)", self._version, time.perf_counter() - t0)
        return True

    def _build_factory(self) -> Callable[[], InteractivePredictor]:
        engine = self.name
        if engine == "grabcut":
            from model.evaluation.grabcut import GrabCutPredictor

            self.model_class = "GrabCutPredictor"
            return GrabCutPredictor
        if engine == "adaptiveclick":
            from model.checkpoint import load_model
            from model.device import resolve_device
            from model.predictor import Predictor

            options = predictor_options(self.settings)
            self.refine = options["refine"].spec
            device = resolve_device(self.settings.device)
            self.device = str(device)
            ckpt = self._checkpoint_path()
            net = load_model(ckpt, device)
            settings = self.settings

            def factory() -> InteractivePredictor:
                return Predictor(net, device=device, dtype=settings.dtype, **options)

            factory()  # fail now (dtype/device problems), not on the first click
            return factory
        if ":" in engine:
            module_name, _, attr = engine.partition(":")
            factory = getattr(importlib.import_module(module_name), attr)
            if not callable(factory):
                raise TypeError(f"MODEL_ENGINE={engine}: {attr} is not callable")
            self.model_class = attr
            return factory
        raise ValueError(f"unknown MODEL_ENGINE={engine!r}: use adaptiveclick, grabcut or package.module:factory")

    def new_predictor(self, timeout: float | None = None) -> InteractivePredictor:
        """A predictor for a new session; ``MASK_THRESHOLD`` (when set) replaces its own threshold."""
        if not self.ready.wait(timeout):
            raise RuntimeError("the model is still loading")
        if self._factory is None:
            raise RuntimeError(f"the model could not be loaded: {self.error}")
        predictor = self._factory()
        if self.settings.mask_threshold is not None:
            predictor.threshold = self.settings.mask_threshold
        return predictor


def predictor_options(settings: Settings) -> dict[str, Any]:
    """Flip, zoom-in, refinement and runtime of the served predictor: the env's, else the model's defaults
    (model.refine, model.runtime), the same that ``adaptiveclick evaluate`` and ``predict`` use, so a measured setting
    is the served one."""
    from model.refine import DEFAULT_FLIP, DEFAULT_REFINE, Refinement, RefineSpecError
    from model.runtime import DEFAULT_RUNTIME, check_runtime

    try:
        refine = Refinement.parse(settings.refine or DEFAULT_REFINE)
    except RefineSpecError as exc:
        raise ValueError(f"MODEL_REFINE={settings.refine!r}: {exc}") from None
    try:
        runtime = check_runtime(settings.runtime or DEFAULT_RUNTIME)
    except ValueError as exc:
        raise ValueError(f"MODEL_RUNTIME={settings.runtime!r}: {exc}") from None
    flip = DEFAULT_FLIP if settings.flip is None else settings.flip
    return {"flip": flip, "zoom_in": settings.zoom_in, "refine": refine, "runtime": runtime}


def watch_versions(engine: Engine, interval_s: float, stop: threading.Event, on_swap: Callable[[], None]) -> None:
    """Serve the version ``MODEL_DIR/current`` names: check every ``interval_s`` until ``stop`` is set, and call
    ``on_swap`` (drop the old model's sessions) after each swap. Never raises: a failed check is logged."""
    while not stop.wait(interval_s):
        try:
            if engine.refresh():
                on_swap()
        except Exception:  # never let the watcher die
            log.exception("checking MODEL_DIR/current failed")
