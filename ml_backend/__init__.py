"""Label Studio ML backend for AdaptiveClick: smart keypoint clicks in, brush masks out.

The HTTP protocol is implemented here on FastAPI (see ``ml_backend.app``); ``model/`` never imports this package.
"""
