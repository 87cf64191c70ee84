"""The serving layer of AdaptiveClick: the model behind Label Studio (an ML backend) and CVAT (an interactor).

One HTTP server (``app``, with its ``config`` settings and ``errors``) hosts two thin platform adapters on one
platform-neutral core:

* ``interactive/``: the core: decoded images, per-object click sessions, the shared session store, the engine;
* ``labelstudio/``: Label Studio's ML backend protocol, its labeling config, its saved regions and its export;
* ``cvat/``: CVAT's interactor (dashboard routes, ``serverless/``'s function), its agent function, its webhooks;
* ``media/``: fetching task images under the URL rules, and decoding them within the pixel limits;
* ``masks/``: polygons, brush RLE and saved regions' masks, for both platforms, the export and fine-tuning;
* ``finetuning/``: the active-learning loop: jobs queued from either platform, the worker, the model store.

Platform folders never import each other, the core imports no platform, and serving never imports the
fine-tuning worker (``tests/test_architecture.py``); ``model/`` never imports this package.
"""
