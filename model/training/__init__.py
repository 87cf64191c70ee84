"""Training the network: the resumable trainer (``trainer``), its data and click simulation (``data``,
``click_sampler``), the set criterion (``criterion``, ``losses``, ``matcher``) and in-memory fine-tuning
(``finetune``). The run log and the figures these produced are in ``TRAINING.md`` beside them."""
