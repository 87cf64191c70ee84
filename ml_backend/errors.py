"""Errors that carry an HTTP status and a message that tells the user what to fix."""

from __future__ import annotations


class BackendError(Exception):
    """An error answered to the caller as ``{"error": message}`` with ``status``; never a traceback."""

    status = 500

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(BackendError):
    """The request body is malformed or has the wrong types (4xx)."""

    status = 422


class MediaError(BackendError):
    """The task's image could not be fetched or decoded; the message says why and what to change."""

    status = 502


class ConfigError(BackendError):
    """The labeling config cannot be served (no smart KeyPointLabels / no matching BrushLabels)."""

    status = 422
