"""The platform-neutral interactive core: an image, clicks (and a box) and an object key in, a mask out.

``core`` (the decoded-image cache and the per-object sessions), ``sessions`` (click sequences and their predictor
states), ``session_store`` (those states shared between processes through ``SESSION_STORE``) and ``engine`` (the
served model, loaded once per process and swapped when fine-tuning promotes a version). It knows no platform.
"""
