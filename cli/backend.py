"""The ML backend's commands: ``serve`` (the HTTP server), ``worker`` (fine-tuning jobs), ``versions``.

    adaptiveclick serve [--host 127.0.0.1] [--port 9090] [--workers N] [--threads T] [--server auto|gunicorn|uvicorn]
    adaptiveclick worker [--once] [--poll S]          # the fine-tuning worker (ml_backend/finetuning/worker.py)
    adaptiveclick versions [list|jobs|rollback VERSION] [--model-dir DIR]

``serve`` runs gunicorn with uvicorn workers when gunicorn is installed (never with ``--preload``: each worker
loads the model itself, so CUDA is never initialised before a fork), else uvicorn directly. The backend is
configured by environment variables (docs/configuration.md); HOST, PORT, WORKERS and THREADS give the
defaults of ``--host``, ``--port``, ``--workers`` and ``--threads``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from typing import Any

APP_FACTORY = "ml_backend.app:create_app"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"environment variable {name}={raw!r} must be an integer") from None


def default_host(env: Any) -> str:
    """``HOST``, else all interfaces only when basic auth protects the backend, else loopback."""
    if env.get("HOST", "").strip():
        return env["HOST"].strip()
    return "0.0.0.0" if env.get("BASIC_AUTH_USER") or env.get("BASIC_AUTH_PASS") else "127.0.0.1"


def add_parsers(subparsers: Any) -> None:
    add_serve_command(subparsers)
    add_finetune_commands(subparsers)


def add_serve_command(subparsers: Any) -> argparse.ArgumentParser:
    serve = subparsers.add_parser(
        "serve",
        help="run the Label Studio ML backend (HTTP server)",
        description="Run the Label Studio ML backend. Configuration comes from the environment: LABEL_STUDIO_URL, "
        "LABEL_STUDIO_API_KEY, LOCAL_FILES_DOCUMENT_ROOT, BASIC_AUTH_USER/PASS, MODEL_ENGINE, MODEL_CHECKPOINT, "
        "DEVICE, SESSION_CACHE_MB, SESSION_TTL_S, LOG_LEVEL (see docs/configuration.md).",
    )
    serve.add_argument(
        "--host",
        default=default_host(os.environ),
        help="bind address (default $HOST; else 0.0.0.0 when basic auth is set, else 127.0.0.1: an "
        "open backend is not put on the network by default)",
    )
    serve.add_argument("--port", type=int, default=_env_int("PORT", 9090), help="port (default 9090)")
    serve.add_argument(
        "--workers",
        type=int,
        default=_env_int("WORKERS", 1),
        help="worker processes, each with its own model (default $WORKERS or 1)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=_env_int("THREADS", 8),
        help="request threads per worker; model work stays serialised (default $THREADS or 8)",
    )
    serve.add_argument(
        "--server",
        choices=("auto", "gunicorn", "uvicorn"),
        default="auto",
        help="auto: gunicorn with uvicorn workers when installed, else uvicorn",
    )
    serve.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"), help="default $LOG_LEVEL or INFO")
    serve.set_defaults(handler=serve_command)
    return serve


def add_finetune_commands(subparsers: Any) -> None:
    worker = subparsers.add_parser(
        "worker",
        help="run the queued fine-tuning jobs of MODEL_DIR (one at a time)",
        description="Run the fine-tuning jobs queued under $MODEL_DIR/jobs, one at a time, in this process. The "
        "server starts `worker --once` itself after queueing a job (FINETUNE_WORKER=spawn, the default); with "
        "FINETUNE_WORKER=external run `adaptiveclick worker` yourself. Settings: FINETUNE_* "
        "(see docs/configuration.md).",
    )
    worker.add_argument("--once", action="store_true", help="drain the queue and exit (default: keep polling)")
    worker.add_argument("--poll", type=float, default=5.0, help="seconds between queue checks (default 5)")
    worker.set_defaults(handler=worker_command)
    versions = subparsers.add_parser(
        "versions",
        help="list fine-tuned model versions and jobs, or roll back",
        description="Model versions under $MODEL_DIR/versions and the version $MODEL_DIR/current points at. "
        "`rollback VERSION` (or `rollback base`) replaces the pointer atomically; running servers switch within "
        "MODEL_WATCH_S seconds, without a restart.",
    )
    versions.add_argument("action", nargs="?", choices=("list", "jobs", "rollback"), default="list")
    versions.add_argument("version", nargs="?", help="the version to serve (rollback), or 'base'")
    versions.add_argument("--model-dir", default=os.environ.get("MODEL_DIR", ""), help="default $MODEL_DIR")
    versions.set_defaults(handler=versions_command)


def worker_command(args: argparse.Namespace) -> int:
    from ml_backend.finetuning.worker import main_worker

    return main_worker(once=args.once, poll_s=args.poll)


def versions_command(args: argparse.Namespace) -> int:
    import json

    from ml_backend.finetuning.model_store import BASE, ModelStore
    from ml_backend.finetuning.sources import describe_job, job_platform

    if not args.model_dir:
        raise ValueError("set MODEL_DIR or pass --model-dir: the folder the backend keeps versions and jobs in")
    store = ModelStore(args.model_dir)
    if args.action == "rollback":
        if not args.version:
            raise ValueError("rollback needs the VERSION to serve (see `adaptiveclick versions list`), or 'base'")
        store.set_current(args.version)
        print(
            f"{store.current_path} -> {args.version}; servers switch within MODEL_WATCH_S seconds "
            "(MODEL_VERSION_PIN, when set, still wins)"
        )
        return 0
    if args.action == "jobs":
        for job in store.jobs():
            print(
                json.dumps(
                    {
                        k: job.get(k)
                        for k in (
                            "id",
                            "platform",
                            "project",
                            "source",
                            "state",
                            "reason",
                            "created",
                            "finished",
                            "promoted",
                            "version",
                            "message",
                        )
                    }
                    | {"platform": job_platform(job)}
                )
            )
        return 0
    current = store.current()
    print(f"{'*' if current == BASE else ' '} base (MODEL_CHECKPOINT)")
    for manifest in store.versions():
        name = manifest.get("version")
        metrics = manifest.get("metrics") or {}
        before, after = metrics.get("before") or {}, metrics.get("after") or {}
        print(
            f"{'*' if name == current else ' '} {name}  parent={manifest.get('parent')}  "
            f"created={manifest.get('created')}  job={manifest.get('job')}  data={describe_job(manifest)}  "
            f"NoC@85 {before.get('noc85')} -> {after.get('noc85')}"
        )
    return 0


def _uvicorn_worker_class() -> str:
    if importlib.util.find_spec("uvicorn_worker") is not None:
        return "uvicorn_worker.UvicornWorker"
    return "uvicorn.workers.UvicornWorker"


def _gunicorn_has_setting(name: str) -> bool:
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:
        return False
    return any(s.name == name for s in KNOWN_SETTINGS)


def gunicorn_argv(args: argparse.Namespace) -> list[str]:
    """The gunicorn command line for ``serve`` (no --preload: the model is loaded in each worker)."""
    # gunicorn >= 24 opens a control socket at a fixed path; two backends on one host would fight over it.
    extra = ["--no-control-socket"] if _gunicorn_has_setting("control_socket_disable") else []
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{args.host}:{args.port}",
        "--workers",
        str(max(1, args.workers)),
        "--worker-class",
        _uvicorn_worker_class(),
        "--timeout",
        "300",
        "--graceful-timeout",
        "30",
        "--log-level",
        args.log_level.lower(),
        "--access-logfile",
        "-",
        *extra,
        f"{APP_FACTORY}()",
    ]


def serve_command(args: argparse.Namespace) -> int:
    from ml_backend.config import Settings

    Settings.from_env()  # a setting that cannot be served (BASIC_AUTH_USER without a password, ...) stops it here
    os.environ["THREADS"] = str(max(1, args.threads))
    os.environ["LOG_LEVEL"] = args.log_level.upper()
    server = args.server
    if server == "auto":
        server = "gunicorn" if importlib.util.find_spec("gunicorn") is not None else "uvicorn"
    if server == "gunicorn":
        argv = gunicorn_argv(args)
        logging.getLogger("adaptiveclick").info("exec: %s", " ".join(argv))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], argv)  # a fresh master process that never imports torch
    import uvicorn

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=max(1, args.workers),
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=30,
    )
    return 0
