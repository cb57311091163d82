"""Environments: where a run's prompts come from and how they become scored
trajectories (``retrain.types.Environment``). Without ``[environment] provider`` a run uses
``SingleTurn``: the ``[data]`` source's prompts, one sampled answer each, scored by the
``[reward]``."""
