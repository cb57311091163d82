"""Prompt sources: each turns a dataset into a deterministic list of ``Example``.

A source is constructed from the config and returns every example in a fixed order;
the run loop shuffles (seeded) and keeps the data cursor, so resuming a run replays the
same order. Built-ins: ``math`` (hendrycks MATH), ``arithmetic`` (generated offline),
``jsonl`` (a local file).
"""
