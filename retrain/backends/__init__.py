"""Training backends: local (PyTorch + PEFT), tinker (remote), prime_rl (external trainer).

Every backend follows ``retrain.backends.base.Backend`` and declares its
``BackendCapabilities``.
"""
