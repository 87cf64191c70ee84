"""``adaptiveclick`` console script: the model commands of ``model.cli`` plus ``serve`` (the ML backend).

    adaptiveclick serve [--host 0.0.0.0] [--port 9090] [--workers N] [--threads T] [--server auto|gunicorn|uvicorn]

``serve`` runs gunicorn with uvicorn workers when gunicorn is installed (never with ``--preload``: each worker
loads the model itself, so CUDA is never initialised before a fork), else uvicorn directly. The backend is
configured by environment variables (see ``ml_backend/README_SECTION.md``); WORKERS and THREADS give the defaults
of ``--workers`` and ``--threads``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from typing import Any, Sequence

APP_FACTORY = "ml_backend.app:create_app"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"environment variable {name}={raw!r} must be an integer") from None


def _base_parser() -> tuple[argparse.ArgumentParser, Any]:
    """``model.cli.build_parser()`` when the model commands exist, else a bare parser."""
    try:
        from model.cli import build_parser
    except ModuleNotFoundError as exc:
        if exc.name not in ("model.cli", "model"):
            raise
        parser = argparse.ArgumentParser(prog="adaptiveclick", description="AdaptiveClick interactive segmentation")
        return parser, parser.add_subparsers(dest="command", metavar="COMMAND")
    return build_parser()


def add_serve_command(subparsers: Any) -> argparse.ArgumentParser:
    serve = subparsers.add_parser(
        "serve",
        help="run the Label Studio ML backend (HTTP server)",
        description="Run the Label Studio ML backend. Configuration comes from the environment: LABEL_STUDIO_URL, "
        "LABEL_STUDIO_API_KEY, LOCAL_FILES_DOCUMENT_ROOT, BASIC_AUTH_USER/PASS, MODEL_ENGINE, MODEL_CHECKPOINT, "
        "DEVICE, SESSION_CACHE_MB, SESSION_TTL_S, LOG_LEVEL (see the README).",
    )
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="bind address (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=_env_int("PORT", 9090), help="port (default 9090)")
    serve.add_argument("--workers", type=int, default=_env_int("WORKERS", 1),
                       help="worker processes, each with its own model (default $WORKERS or 1)")
    serve.add_argument("--threads", type=int, default=_env_int("THREADS", 8),
                       help="request threads per worker; model work stays serialised (default $THREADS or 8)")
    serve.add_argument("--server", choices=("auto", "gunicorn", "uvicorn"), default="auto",
                       help="auto: gunicorn with uvicorn workers when installed, else uvicorn")
    serve.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"), help="default $LOG_LEVEL or INFO")
    serve.set_defaults(handler=serve_command)
    return serve


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
        sys.executable, "-m", "gunicorn",
        "--bind", f"{args.host}:{args.port}",
        "--workers", str(max(1, args.workers)),
        "--worker-class", _uvicorn_worker_class(),
        "--timeout", "300",
        "--graceful-timeout", "30",
        "--log-level", args.log_level.lower(),
        "--access-logfile", "-",
        *extra,
        f"{APP_FACTORY}()",
    ]


def serve_command(args: argparse.Namespace) -> int:
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

    uvicorn.run(APP_FACTORY, factory=True, host=args.host, port=args.port, workers=max(1, args.workers),
                log_level=args.log_level.lower(), timeout_graceful_shutdown=30)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser, subparsers = _base_parser()
    add_serve_command(subparsers)
    try:
        from model.cli import dispatch  # the model commands' parsing and error reporting
    except ModuleNotFoundError as exc:
        if exc.name not in ("model.cli", "model"):
            raise
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        return int(handler(args) or 0)
    return dispatch(parser, list(argv) if argv is not None else None)


if __name__ == "__main__":
    raise SystemExit(main())
