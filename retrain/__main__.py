"""``python -m retrain`` runs the CLI."""

from retrain.cli import entry

entry()
