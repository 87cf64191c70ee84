"""Settings of the backend, read from the environment (the names Label Studio backend users expect)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from model.weights import PROJECT_WEIGHTS_DIR, STARTER_WEIGHTS

# The largest tolerance whose 10th-percentile IoU with the mask stays >= 0.98 on the training data's validation
# splits (benchmarks/polygon_tolerance.py, docs/export.md).
POLYGON_TOLERANCE_PX = 0.75
POLYGON_MIN_AREA_PX = 16  # parts smaller than a 4x4 speck get no polygon
BURST_POLICIES = ("exact", "merged")


def _bool(value: str | None, default: bool | None) -> bool | None:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(float(raw))
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a number") from exc


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    """The lower-cased value of ``name`` (``default`` when unset), which must be one of ``choices``."""
    value = (env.get(name) or "").strip().lower() or default
    if value not in choices:
        raise ValueError(f"environment variable {name}={env.get(name)!r} must be one of {', '.join(choices)}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} must be a number") from exc


def env_non_negative(env: Mapping[str, str], name: str, default: float) -> float:
    value = env_float(env, name, default)
    if not value >= 0.0:  # also refuses nan
        raise ValueError(f"environment variable {name}={value} must be a number >= 0")
    return value


def env_probability(env: Mapping[str, str], name: str, default: float) -> float:
    value = env_float(env, name, default)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"environment variable {name}={value} must be a probability between 0 and 1")
    return value


def env_optional_probability(env: Mapping[str, str], name: str) -> float | None:
    """The probability in ``name``, or None when it is unset (the model keeps its own value)."""
    if not (env.get(name) or "").strip():
        return None
    return env_probability(env, name, 0.0)


def _session_store(raw: str) -> str:
    """``SESSION_STORE``: empty or ``local`` (this process), else a Redis URL."""
    value = raw.strip()
    if value.lower() in ("", "local"):
        return ""
    if not value.lower().startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            f"environment variable SESSION_STORE={raw!r} must be empty, 'local' or a Redis URL "
            "(redis://host:6379/0, rediss://..., unix:///path/redis.sock)"
        )
    return value


def auth_pair_problem(settings: Settings) -> str:
    """Why a half-set basic-auth pair is refused (an empty password would be accepted on 0.0.0.0)."""
    given, missing = (
        ("BASIC_AUTH_USER", "BASIC_AUTH_PASS") if settings.basic_auth_user else ("BASIC_AUTH_PASS", "BASIC_AUTH_USER")
    )
    return (
        f"{given} is set but {missing} is empty: set both (basic auth protects every route) or neither "
        "(the backend then listens on 127.0.0.1 only)"
    )


def _id_list(raw: str) -> tuple[str, ...]:
    """A comma-separated list of project ids (``FINETUNE_PROJECTS``, ``FINETUNE_CVAT_PROJECTS``)."""
    return tuple(p.strip() for p in raw.split(",") if p.strip())


# The CVAT job changes that make a finished job worth learning from: a stage it enters, or the state "completed".
CVAT_TRIGGERS = ("annotation", "validation", "acceptance", "completed")


def _cvat_finetune_on(raw: str) -> tuple[str, ...]:
    """``CVAT_FINETUNE_ON``: which CVAT job changes queue a fine-tuning job (default ``acceptance,completed``)."""
    words = tuple(dict.fromkeys(w.strip().lower() for w in raw.split(",") if w.strip()))
    unknown = [w for w in words if w not in CVAT_TRIGGERS]
    if unknown:
        raise ValueError(
            f"environment variable CVAT_FINETUNE_ON={raw!r}: {', '.join(unknown)} is not one of "
            f"{', '.join(CVAT_TRIGGERS)} (a job stage it enters, or the state 'completed')"
        )
    return words or ("acceptance", "completed")


@dataclasses.dataclass
class Settings:
    # --- Label Studio access (media download) ---
    label_studio_url: str = ""
    label_studio_api_key: str = ""
    local_files_document_root: str = ""
    media_allowed_hosts: tuple[str, ...] = ()
    max_image_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    fetch_timeout_s: float = 30.0
    # --- `adaptiveclick export --project`: the project export downloaded from Label Studio ---
    export_max_bytes: int = 1024 * 1024 * 1024
    export_timeout_s: float = 600.0
    # --- HTTP server ---
    basic_auth_user: str = ""
    basic_auth_pass: str = ""
    max_request_bytes: int = 64 * 1024 * 1024
    threads: int = 8
    no_traffic_warning_s: float = 120.0
    # --- model ---
    model_engine: str = "adaptiveclick"
    model_checkpoint: str = ""
    weights_dir: str = ""  # ADAPTIVECLICK_WEIGHTS_DIR: where the shipped weights are (an installed package has none)
    model_dir: str = ""
    model_version: str = ""
    device: str = "auto"
    dtype: str = "fp32"
    flip: bool | None = None  # MODEL_FLIP; None = model.refine.DEFAULT_FLIP (what evaluate and predict use too)
    zoom_in: bool = True
    refine: str = ""  # MODEL_REFINE: a model.refine spec; empty = model.refine.DEFAULT_REFINE
    runtime: str = ""  # MODEL_RUNTIME: a model.runtime name; empty = model.runtime.DEFAULT_RUNTIME
    mask_threshold: float | None = None  # None: the predictor's own threshold (0.49 for AdaptiveClick)
    # --- polygon answers and exports (ml_backend/masks/polygons.py, docs/export.md) ---
    polygon_tolerance_px: float = POLYGON_TOLERANCE_PX
    polygon_min_area_px: int = POLYGON_MIN_AREA_PX
    output_shape: str = "brush"  # OUTPUT_SHAPE: what to answer when the config offers both brush and polygon
    continue_regions: bool = True  # CONTINUE_REGIONS: a click inside a saved region of its label continues it
    # --- per-session cache ---
    session_cache_mb: int = 2048
    session_ttl_s: float = 1800.0
    max_clicks: int = 100
    # BURST_CLICKS: the clicks of a request that overtook older ones run one forward each ("exact": the mask of the
    # same clicks made slowly) or in one forward ("merged"); docs/evaluation.md measures the trade
    burst_clicks: str = "exact"
    prefetch_on_open: bool = True
    log_level: str = "INFO"
    # --- shared click states and the job queue of several workers/replicas (session_store, job_queue) ---
    session_store: str = ""  # SESSION_STORE: "" (this process only) or redis://host:6379/0
    session_store_timeout_s: float = 0.25  # socket timeout of every Redis call of the session store
    session_store_retry_s: float = 10.0  # after a Redis failure, leave it alone this long (circuit breaker)
    finetune_queue: str = "auto"  # auto: rq when SESSION_STORE is Redis, else file; file; rq
    # --- active-learning fine-tuning (ml_backend/finetuning/server.py) ---
    finetune: str = "auto"  # auto: on when MODEL_DIR is set and the engine is adaptiveclick; on; off
    start_training_each_n_updates: int = 0  # 0: train only on START_TRAINING
    finetune_projects: tuple[str, ...] = ()  # only these project ids (empty: any)
    finetune_worker: str = "spawn"  # spawn: the server starts the worker process; external: `adaptiveclick worker`
    model_version_pin: str = ""  # serve this version whatever MODEL_DIR/current says ("base" = MODEL_CHECKPOINT)
    model_watch_s: float = 2.0  # how often the server checks MODEL_DIR/current for a new version
    # --- CVAT as a source of fine-tuning data (ml_backend/cvat/webhook.py, ml_backend/cvat/annotations.py) ---
    cvat_url: str = ""  # CVAT_URL: the CVAT server the worker reads annotations and frames from
    cvat_access_token: str = ""  # CVAT_ACCESS_TOKEN: a personal access token (Bearer) or a legacy API key (Token)
    cvat_webhook_secret: str = ""  # CVAT_WEBHOOK_SECRET: the webhook's secret; unset = CVAT webhooks refused
    cvat_finetune_on: tuple[str, ...] = ("acceptance", "completed")  # CVAT_FINETUNE_ON: job stages/states
    finetune_cvat_projects: tuple[str, ...] = ()  # FINETUNE_CVAT_PROJECTS: only these CVAT project ids (empty: any)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        if bool(env.get("BASIC_AUTH_USER", "")) != bool(env.get("BASIC_AUTH_PASS", "")):
            raise ValueError(auth_pair_problem(cls(basic_auth_user=env.get("BASIC_AUTH_USER", ""))))
        hosts = tuple(h.strip().lower() for h in env.get("MEDIA_ALLOWED_HOSTS", "").split(",") if h.strip())
        return cls(
            label_studio_url=env.get("LABEL_STUDIO_URL", env.get("LABEL_STUDIO_HOST", "")).strip(),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY", env.get("LABEL_STUDIO_ACCESS_TOKEN", "")).strip(),
            local_files_document_root=env.get(
                "LOCAL_FILES_DOCUMENT_ROOT", env.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "")
            ).strip(),
            media_allowed_hosts=hosts,
            max_image_bytes=env_int(env, "MAX_IMAGE_MB", 64) * 1024 * 1024,
            max_image_pixels=int(env_float(env, "MAX_IMAGE_MEGAPIXELS", 64.0) * 1_000_000),
            fetch_timeout_s=env_float(env, "FETCH_TIMEOUT_S", 30.0),
            export_max_bytes=env_int(env, "EXPORT_MAX_MB", 1024) * 1024 * 1024,
            export_timeout_s=env_non_negative(env, "EXPORT_TIMEOUT_S", 600.0),
            basic_auth_user=env.get("BASIC_AUTH_USER", ""),
            basic_auth_pass=env.get("BASIC_AUTH_PASS", ""),
            max_request_bytes=env_int(env, "MAX_REQUEST_MB", 64) * 1024 * 1024,
            threads=max(1, env_int(env, "THREADS", 8)),
            no_traffic_warning_s=env_float(env, "NO_TRAFFIC_WARNING_S", 120.0),
            model_engine=env.get("MODEL_ENGINE", "adaptiveclick").strip() or "adaptiveclick",
            # ADAPTIVECLICK_CHECKPOINT: the older name (the command line's), still honoured.
            model_checkpoint=(env.get("MODEL_CHECKPOINT", "") or env.get("ADAPTIVECLICK_CHECKPOINT", "")).strip(),
            weights_dir=env.get("ADAPTIVECLICK_WEIGHTS_DIR", "").strip(),
            model_dir=env.get("MODEL_DIR", "").strip(),
            model_version=env.get("MODEL_VERSION", "").strip(),
            device=env.get("DEVICE", "auto").strip() or "auto",
            dtype=env.get("MODEL_DTYPE", "fp32").strip() or "fp32",
            flip=_bool(env.get("MODEL_FLIP"), None),
            zoom_in=_bool(env.get("MODEL_ZOOM_IN"), True),
            refine=env.get("MODEL_REFINE", "").strip(),
            runtime=env.get("MODEL_RUNTIME", "").strip().lower(),
            mask_threshold=env_optional_probability(env, "MASK_THRESHOLD"),
            polygon_tolerance_px=env_non_negative(env, "POLYGON_TOLERANCE_PX", POLYGON_TOLERANCE_PX),
            polygon_min_area_px=max(1, env_int(env, "POLYGON_MIN_AREA_PX", POLYGON_MIN_AREA_PX)),
            output_shape=env_choice(env, "OUTPUT_SHAPE", "brush", ("brush", "polygon")),
            continue_regions=bool(_bool(env.get("CONTINUE_REGIONS"), True)),
            session_cache_mb=env_int(env, "SESSION_CACHE_MB", 2048),
            session_ttl_s=env_float(env, "SESSION_TTL_S", 1800.0),
            max_clicks=env_int(env, "MAX_CLICKS", 100),
            burst_clicks=env_choice(env, "BURST_CLICKS", "exact", BURST_POLICIES),
            prefetch_on_open=_bool(env.get("PREFETCH_ON_TASK_OPEN"), True),
            log_level=(env.get("LOG_LEVEL", "INFO").strip() or "INFO").upper(),
            session_store=_session_store(env.get("SESSION_STORE", "")),
            session_store_timeout_s=env_float(env, "SESSION_STORE_TIMEOUT_S", 0.25),
            session_store_retry_s=env_float(env, "SESSION_STORE_RETRY_S", 10.0),
            finetune_queue=env_choice(env, "FINETUNE_QUEUE", "auto", ("auto", "file", "rq")),
            finetune=(env.get("FINETUNE", "auto").strip() or "auto").lower(),
            start_training_each_n_updates=max(0, env_int(env, "START_TRAINING_EACH_N_UPDATES", 0)),
            finetune_projects=_id_list(env.get("FINETUNE_PROJECTS", "")),
            finetune_worker=(env.get("FINETUNE_WORKER", "spawn").strip() or "spawn").lower(),
            model_version_pin=env.get("MODEL_VERSION_PIN", "").strip(),
            model_watch_s=env_float(env, "MODEL_WATCH_S", 2.0),
            cvat_url=env.get("CVAT_URL", "").strip(),
            cvat_access_token=env.get("CVAT_ACCESS_TOKEN", "").strip(),
            cvat_webhook_secret=env.get("CVAT_WEBHOOK_SECRET", "").strip(),
            cvat_finetune_on=_cvat_finetune_on(env.get("CVAT_FINETUNE_ON", "")),
            finetune_cvat_projects=_id_list(env.get("FINETUNE_CVAT_PROJECTS", "")),
        )

    @property
    def base_checkpoint(self) -> Path:
        """The base model's weights: ``MODEL_CHECKPOINT`` (a relative path that does not exist as given is looked
        up in ``MODEL_DIR``), else the starter in the weights folder. Fine-tuned versions:
        ``model_store.served_checkpoint``."""
        if not self.model_checkpoint:
            return self.shipped_weights_dir / STARTER_WEIGHTS.name
        path = Path(self.model_checkpoint).expanduser()
        if not path.is_absolute() and self.model_dir and not path.exists():
            path = Path(self.model_dir) / path
        return path

    @property
    def shipped_weights_dir(self) -> Path:
        """``ADAPTIVECLICK_WEIGHTS_DIR``, else the project's ``weights/`` (beside the packages of a checkout)."""
        return Path(self.weights_dir) if self.weights_dir else PROJECT_WEIGHTS_DIR

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user or self.basic_auth_pass)
