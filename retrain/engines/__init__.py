"""Inference engines: the in-process PyTorch engine and OpenAI-compatible HTTP engines.

Every engine follows ``retrain.engines.base.Engine``.
"""
