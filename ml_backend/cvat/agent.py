"""CVAT Online and Enterprise: AdaptiveClick as an agent-run interaction function (``cvat-sdk``'s
``cvat_sdk.auto_annotation.InteractionFunction``), for editions that cannot deploy nuclio functions.

    cvat-cli --server-host https://app.cvat.ai function create-native AdaptiveClick \\
        --function-module ml_backend.cvat.agent
    cvat-cli --server-host https://app.cvat.ai function run-agent <id> --function-module ml_backend.cvat.agent

``cvat-cli``'s agent polls CVAT for the annotators' clicks, loads the frame, calls :meth:`preprocess_image` once per
(task, frame, region of interest) and keeps its result, then :meth:`detect` with every current prompt on each
click. Both run on the same interactive core as ``serve`` (:class:`~ml_backend.cvat.interactor.CvatInteractor`):
the object is keyed by the frame's pixels, so the previous mask is kept across calls for the same task and frame,
one click costs one forward, a box is optional, and the reply is the interactor's (one mask shape per part, the
confidence on the slider's scale). The model is the one ``serve`` would load (``MODEL_CHECKPOINT``, ``DEVICE``, ...),
and with ``MODEL_DIR`` the version the fine-tuning loop promotes, checked every ``MODEL_WATCH_S``.

A bad request (a point outside the frame or not a number, a frame above ``MAX_IMAGE_MEGAPIXELS``) raises a
:class:`~ml_backend.errors.BackendError` naming it: the agent fails that request and keeps serving. The agent tells
CVAT only "Unknown error" for a function's exception (it keeps exception texts off the server); the reason is in
the agent's log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from typing import Any

import numpy as np

from ..config import Settings
from ..errors import MediaError
from ..interactive.core import InteractiveCore
from ..interactive.engine import Engine, watch_versions
from ..interactive.sessions import RunStats
from ..media.fetcher import DecodedImage
from .interactor import CvatInteractor

log = logging.getLogger("adaptiveclick.cvat.agent")

try:  # an optional extra (pip install 'adaptiveclick[cvat-agent]'): only the agent needs it
    import cvat_sdk.auto_annotation as cvataa
    from cvat_sdk import models as cvat_models
except ImportError:  # pragma: no cover - exercised where cvat-sdk is not installed
    cvataa = None
    cvat_models = None

# What CVAT's UI is told (the same as the nuclio route's annotations): no positive point needed, since a drawn box
# is sent alone and gives the mask; negative points allowed from the start; a box optional.
MIN_POS_POINTS = 0
MIN_NEG_POINTS = 0
MIN_BOUNDING_BOXES = 0


@dataclasses.dataclass(frozen=True)
class AgentImage:
    """A frame as :meth:`AdaptiveClickAgent.preprocess_image` leaves it: decoded, and named by its pixels."""

    image_id: str  # "pixels:<sha256 of size and RGB bytes>": the object's key across detect calls
    decoded: DecodedImage


class AdaptiveClickAgent:
    """The interaction function: ``spec``, ``preprocess_image`` and ``detect`` on a lazily loaded core."""

    def __init__(self, settings: Settings | None = None, engine: Engine | None = None):
        self.settings = settings or Settings.from_env()
        self._engine = engine
        self._interactor: CvatInteractor | None = None
        self._lock = threading.Lock()
        if cvataa is None:
            raise RuntimeError("the CVAT agent needs cvat-sdk: pip install 'adaptiveclick[cvat-agent]'")
        self.spec = cvataa.InteractionFunctionSpec(
            min_pos_points=MIN_POS_POINTS, min_neg_points=MIN_NEG_POINTS, min_bounding_boxes=MIN_BOUNDING_BOXES
        )

    @property
    def interactor(self) -> CvatInteractor:
        """The core, loaded on first use: ``function create-native`` reads only ``spec`` and loads no model."""
        with self._lock:
            if self._interactor is None:
                engine = self._engine or Engine(self.settings)
                if not engine.ready.is_set():
                    engine.load()
                if engine.error:
                    raise RuntimeError(f"the AdaptiveClick model could not be loaded: {engine.error}")
                core = InteractiveCore(self.settings, engine)
                if self.settings.model_dir and self.settings.model_watch_s > 0:  # the promoted fine-tuned version
                    args = (engine, self.settings.model_watch_s, threading.Event(), core.drop_sessions)
                    threading.Thread(target=watch_versions, args=args, name="model-watch", daemon=True).start()
                self._interactor = CvatInteractor(core)
            return self._interactor

    def preprocess_image(self, context: Any, image: Any) -> AgentImage:
        """A PIL frame -> RGB pixels and their hash; a frame above ``MAX_IMAGE_MEGAPIXELS`` is refused before
        its pixels are converted."""
        width, height = image.size
        limit = self.settings.max_image_pixels
        if width * height > limit:
            raise MediaError(
                f"the frame is {width}x{height} = {width * height / 1e6:.1f} MP, above the limit of "
                f"{limit / 1e6:.1f} MP (MAX_IMAGE_MEGAPIXELS)",
                status=413,
            )
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        array = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
        digest = hashlib.sha256(f"{width}x{height}:".encode())
        digest.update(array.data)
        decoded = DecodedImage(array=array, raw_size=(width, height), orientation=1, nbytes_source=array.nbytes)
        return AgentImage("pixels:" + digest.hexdigest(), decoded)

    def detect(self, context: Any, pp_image: AgentImage, prompts: Any) -> list:
        """The mask shapes for the prompts (every current click, the box if any), as the interactor answers."""
        box = prompts.bounding_box
        stats = RunStats()
        reply = self.interactor.answer(
            pp_image.image_id,
            pp_image.decoded,
            [list(p) for p in prompts.pos_points],
            [list(p) for p in prompts.neg_points],
            [list(c) for c in box] if box is not None else [],
            stats,
        )
        log.info(
            "%d positive, %d negative point(s)%s: %d forward(s), %d shape(s)",
            len(prompts.pos_points),
            len(prompts.neg_points),
            ", a box" if box is not None else "",
            stats.forwards,
            len(reply["shapes"]),
        )
        return [
            cvataa.InteractionResultShape(
                type=shape["type"],
                points=shape["points"],
                attributes=[
                    cvat_models.AttributeValRequest(spec_id=a["spec_id"], value=a["value"]) for a in shape["attributes"]
                ],
            )
            for shape in reply["shapes"]
        ]


def create(**parameters: Any) -> AdaptiveClickAgent:
    """``cvat-cli``'s function factory (``--function-module ml_backend.cvat.agent``); settings come from the
    environment as for ``serve``. ``-p`` parameters are refused: one source of truth per setting."""
    if parameters:
        raise TypeError(
            f"AdaptiveClick's agent takes no -p parameters (got {sorted(parameters)}); "
            "set MODEL_CHECKPOINT, MODEL_DIR, DEVICE, ... in the environment as for serve"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return AdaptiveClickAgent()
