"""Rewards: score every completion of a step against its example's reference.

Built-ins (``[reward] type``): ``match`` (exact final answer), ``math`` (symbolic
equivalence via math-verify), ``judge`` (an LLM judge over an OpenAI-compatible API) and
``custom`` (a user function). Each is a class built as ``Cls(config)`` and called as
``score(texts, examples) -> float64 array``; see ``retrain.rewards.base`` for the
contract. The registry imports each from its own module, so optional dependencies load
only for the reward in use.
"""
