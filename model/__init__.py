"""AdaptiveClick in plain PyTorch. Network: ``modeling`` and its configs (``build``, ``checkpoint``); inference:
the stateful ``Predictor`` (``predictor``, ``refine``, ``zoom_in``); training: ``training``; the NoC protocol:
``evaluation``. Never imports web code, and inference never imports training.

    from model.checkpoint import load_model
    from model.predictor import Predictor
"""
