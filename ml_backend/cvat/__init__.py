"""CVAT: the interactor protocol (``interactor``) behind the nuclio dashboard routes and ``serverless/``'s function."""
