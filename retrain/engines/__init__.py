"""Inference engines: each samples trajectories and loads published policies
(``retrain.types.Engine``), declaring what it can load in ``EngineCapabilities``."""
