"""Label Studio: the ML backend protocol (``adapter``, with a ``/predict`` body read and answered once in
``predict_request``), the labeling config (``labeling_config``), the regions an annotation saves (``regions``), the
annotations a fine-tuning job learns from (``training_data``) and the conversion of its JSON export to YOLO / COCO
(``export``)."""
