"""``adaptiveclick serve``: argument defaults from the environment, gunicorn without --preload, uvicorn fallback."""

from __future__ import annotations

import pytest

import cli
from cli import backend


def test_serve_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--port" in out and "LABEL_STUDIO_URL" in out


def test_serve_defaults_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("THREADS", "5")
    monkeypatch.setenv("PORT", "9191")
    for name in ("HOST", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(name, raising=False)
    args = cli.build_parser().parse_args(["serve"])
    assert (args.workers, args.threads, args.port, args.host) == (3, 5, 9191, "127.0.0.1")  # open: loopback only
    assert backend.default_host({"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "x"}) == "0.0.0.0"  # protected: network
    assert backend.default_host({"HOST": "10.1.2.3"}) == "10.1.2.3"


def test_gunicorn_command_never_preloads(monkeypatch):
    argv = backend.gunicorn_argv(
        cli.build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "9999", "--workers", "2"])
    )
    assert "--preload" not in argv
    assert argv[argv.index("--worker-class") + 1].endswith("UvicornWorker")
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:9999" and argv[argv.index("--workers") + 1] == "2"
    assert argv[-1] == "ml_backend.app:create_app()"


def test_uvicorn_server_is_started_with_the_app_factory(monkeypatch):
    import uvicorn

    calls = {}
    monkeypatch.setenv("THREADS", "8")  # serve() exports THREADS/LOG_LEVEL to the workers; restored afterwards
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    assert cli.main(["serve", "--server", "uvicorn", "--port", "9092", "--threads", "3"]) == 0
    assert calls["app"] == "ml_backend.app:create_app" and calls["factory"] is True and calls["port"] == 9092
    import os

    assert os.environ["THREADS"] == "3"
