"""The serving layer of AdaptiveClick: the model behind Label Studio (an ML backend) and CVAT (an interactor).

One HTTP server (``app``, with its ``config`` settings and ``errors``) hosts two thin platform adapters on one
platform-neutral core:

* ``interactive/``: the core: decoded images, per-object click sessions, the shared session store, the engine;
* ``labelstudio/``: Label Studio's ML backend protocol, its labeling config, its saved regions and its export;
* ``cvat/``: CVAT's interactor protocol (the nuclio dashboard routes and the function in ``serverless/``);
* ``media/``: fetching task images under the URL rules, and decoding them within the pixel limits;
* ``masks/``: masks as polygons and as Label Studio's brush RLE, for both platforms and the export;
* ``finetuning/``: the active-learning loop: webhooks recorded, the job queue, the worker, the model store.

Platform folders never import each other, the core imports no platform, and serving never imports the
fine-tuning worker (``tests/test_architecture.py``); ``model/`` never imports this package.
"""
