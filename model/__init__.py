"""AdaptiveClick in plain PyTorch: network (``modeling``), configs (``build``), checkpoints, the
stateful ``Predictor``, losses, training and the NoC evaluation protocol. Never imports web code.

    from model.checkpoint import load_model
    from model.predictor import Predictor
"""
