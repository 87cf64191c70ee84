"""CVAT's nuclio function for AdaptiveClick: ``init_context`` loads the model once, ``handler`` answers a click.

Thin on purpose: parsing, the image limits, the click sessions, ``SESSION_STORE``, the errors and CVAT's reply
format are the ML backend's (``ml_backend/cvat/interactor.py`` on ``ml_backend/interactive/core.py``), the same code
that answers CVAT
through ``adaptiveclick serve``'s dashboard routes. Settings come from the environment as for ``serve``
(``MODEL_CHECKPOINT``, ``MODEL_DIR``, ``DEVICE``, ``SESSION_STORE``, ...)."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from ml_backend.config import Settings
from ml_backend.cvat.interactor import CvatInteractor
from ml_backend.interactive.core import InteractiveCore
from ml_backend.interactive.engine import Engine, watch_versions


def init_context(context: Any) -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = Engine(settings)
    engine.load()
    if engine.error:  # fail the deployment with the reason, not every click
        raise RuntimeError(f"the AdaptiveClick model could not be loaded: {engine.error}")
    core = InteractiveCore(settings, engine)
    if settings.model_dir and settings.model_watch_s > 0:  # serve the versions fine-tuning promotes
        args = (engine, settings.model_watch_s, threading.Event(), core.drop_sessions)
        threading.Thread(target=watch_versions, args=args, name="model-watch", daemon=True).start()
    context.user_data.interactor = CvatInteractor(core)


def handler(context: Any, event: Any) -> Any:
    status, reply = context.user_data.interactor.handle(event.body)
    return context.Response(body=json.dumps(reply), headers={}, content_type="application/json", status_code=status)
