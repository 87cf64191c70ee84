"""Mask encodings both platforms and the export share: polygons (``polygons``) and Label Studio's brush RLE
(``rle``)."""
