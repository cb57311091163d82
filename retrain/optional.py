"""Optional dependencies: import one, or fail with the extra that provides it.

The core of retrain (CLI, config, credit assignment) needs only numpy; features such as
the math reward, wandb logging or the MATH dataset pull in packages from an extra
(``pip install 'retrain[math]'``). A missing one is a configuration problem on the
setting that asked for the feature, reported before any model loads.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from retrain.errors import ConfigError, ConfigIssue


def require_module(module: str, extra: str, section: str, key: str, feature: str) -> ModuleType:
    """Import ``module``, or raise a ``ConfigError`` on ``[section].key`` saying that
    ``feature`` needs it and naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(ConfigIssue(
            "", section, key,
            f"{feature} needs the Python package '{module}', which cannot be imported ({exc})",
            f"install it with: pip install 'retrain[{extra}]'",
        )) from exc
