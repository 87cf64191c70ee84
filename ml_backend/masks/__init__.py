"""Masks both platforms, the export and fine-tuning share: polygons (``polygons``), Label Studio's brush RLE
(``rle``) and the one builder of a saved region's mask from a polygon or a mask (``regions``)."""
