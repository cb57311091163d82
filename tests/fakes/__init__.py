"""Components that live outside retrain, written the way a user or a later feature would:
a remote training service, a backend that trains through it, and an HTTP-style engine
that samples from it. Tests select them by dotted path (``fakes.remote_backend.RemoteBackend``,
``fakes.http_engine.HttpEngine``) with ``tests/`` in ``[plugins] search_paths``."""
