"""The error types retrain raises.

Every error a user can cause derives from ``RetrainError``; the CLI prints such errors
as plain text and exits with code 2, without a traceback (``RETRAIN_DEBUG=1`` shows it).
Anything else reaching the CLI is a bug in retrain and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class RetrainError(Exception):
    """Root of all errors caused by user input or the user's environment."""

    exit_code = 2


class UsageError(RetrainError):
    """A command line that cannot be carried out (unknown flag, missing value, ...)."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a configuration.

    ``where`` is a location such as ``retrain.toml:12``, ``CLI --lr`` or
    ``env RETRAIN_TRAINING__LR``; ``section``/``key`` name the setting
    (``key`` may be empty for a whole-section problem). ``warning`` marks a valid
    setting that has no effect, reported without stopping the run.
    """

    where: str
    section: str
    key: str
    problem: str
    fix: str = ""
    warning: bool = False

    def __str__(self) -> str:
        name = f"[{self.section}]" if self.section else ""
        if self.key:
            name = f"{name}.{self.key}" if name else self.key
        head = " ".join(part for part in (self.where, name) if part)
        text = f"{head}: {self.problem}" if head else self.problem
        return f"{text} — {self.fix}" if self.fix else text


class ConfigError(RetrainError):
    """One or more problems in a configuration, reported together."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue) -> None:
        self.issues = [issues] if isinstance(issues, ConfigIssue) else list(issues)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.issues) == 1:
            return f"invalid configuration: {self.issues[0]}"
        lines = [f"invalid configuration ({len(self.issues)} problems):"]
        lines.extend(f"  {issue}" for issue in self.issues)
        return "\n".join(lines)


class PluginError(RetrainError):
    """A plugin could not be found, imported, or returned output of the wrong shape."""


class EngineError(RetrainError):
    """The inference engine failed in a way the user can act on."""


class BackendError(RetrainError):
    """The training backend failed in a way the user can act on."""
