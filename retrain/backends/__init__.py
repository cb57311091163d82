"""Training backends: each trains the policy and publishes its versions
(``retrain.types.Backend``), declaring what it guarantees in ``BackendCapabilities``."""
