"""Support for the tests, benchmarks and scripts; not part of the shipped packages (``pyproject.toml`` installs
``model``, ``ml_backend`` and ``cli`` only).

* ``standins``: a stand-in predictor (``MODEL_ENGINE=testkit.standins:DiskPredictor``) for tests and for
  measuring the server's own overhead;
* ``ls_harness``: a real Label Studio 1.23.2 and a backend process, for the end-to-end tests and benchmarks;
* ``redis_harness``: a private redis-server, for the scale-out tests and benchmark.
"""
