"""Built-in models: ``retrain/tiny``, a small offline model built on first use."""
