"""Active-learning fine-tuning: the serving process records webhooks and queues jobs (``server``, ``job_queue``),
a separate worker process reads a platform's annotations (``sources``: Label Studio or CVAT), trains, gates and
promotes versions (``worker``), all kept in the ``model_store``."""
