"""Label Studio: the ML backend protocol (``adapter``), the labeling config (``labeling_config``), the regions an
annotation saves (``regions``) and the conversion of its JSON export to YOLO / COCO (``export``)."""
