"""CVAT: the interactor protocol (``interactor``: the nuclio dashboard routes and ``serverless/``'s function), the
agent function for CVAT Online and Enterprise (``agent``, run by ``cvat-cli function run-agent``), and the way back:
signed webhooks (``webhook``) that queue fine-tuning on a project's finished jobs, read through CVAT's REST API
(``api``) into training masks (``annotations``)."""
