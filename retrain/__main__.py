"""``python -m retrain`` runs the CLI."""

import sys

from retrain.cli import main

sys.exit(main())
