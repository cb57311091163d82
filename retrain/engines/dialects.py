"""How each inference server is asked for samples, and how its replies are read.

A dialect turns one ``SampleRequest`` (a prompt's token ids, how many samples, the
sampling parameters, the adapter or model to sample from) into the JSON body of one HTTP
request, and the server's JSON reply back into ``Completion``s: the sampled token ids,
the server's log-probability of each, and why sampling stopped. Anything a reply lacks
or gets wrong — missing log-probabilities, a wrong number of choices, token ids outside
the vocabulary, counts that disagree — is a ``MalformedReply``; nothing is ever filled
in with zeros, since a made-up log-probability would silently bias the update.

- ``vllm``: ``POST /v1/completions`` with the prompt as token ids,
  ``return_tokens_as_token_ids`` (tokens come back as ``"token_id:<id>"``), ``logprobs:
  0`` (the sampled token's log-probability only), ``n`` samples per request and a
  ``cache_salt`` naming the policy version, so no prefix-cache block computed under
  older weights is reused.
- ``sglang``: ``POST /generate`` with ``input_ids``, ``return_logprob`` and the version's
  ``cache_salt``; the reply's ``meta_info.output_token_logprobs`` holds ``[logprob,
  token_id, text]`` triples, one list entry per sample (prompt-major).
- ``completions`` (any OpenAI-compatible server): ``POST /v1/completions`` with a
  token-id prompt where the server takes one, else the prompt's text (counted as a text
  prompt); tokens come back as text pieces and are mapped to ids by tokenizing the
  completion, accepted only when that gives exactly one id per log-probability.
- ``mlx`` (``mlx_lm.server``): ``POST /v1/completions`` with the prompt's text (it takes
  no token ids), ``logprobs: true`` (a bool; an integer crashes its handler) and one sample
  per request; the reply's ``logprobs.content`` lists ``{"id", "logprob"}`` per sampled
  token. Its log-probabilities are taken before temperature, so they are the sampling
  distribution's only at temperature 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from retrain.errors import EngineError
from retrain.types import SamplingParams


class MalformedReply(EngineError):
    """A server reply that cannot be read as the samples that were asked for."""


@dataclass(frozen=True)
class SampleRequest:
    """One request: ``n`` samples after ``prompt_ids`` from ``model`` (a served model or
    a loaded adapter's name). ``prompt_text`` is the decoded prompt, sent instead of the
    ids to a server that cannot take ids. ``cache_salt`` differs per policy version."""

    prompt_ids: list[int]
    prompt_text: str
    n: int
    params: SamplingParams
    model: str
    seed: int
    stop_token_ids: tuple[int, ...]
    cache_salt: str
    adapter: str = ""


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"


# Turns a completion's text into token ids (the engine's tokenizer, no special tokens).
Tokenize = Callable[[str], list[int]]


class Dialect(Protocol):
    """The request and reply shapes of one server's sampling endpoint."""

    path: str
    # The server takes the prompt as token ids (else as text).
    token_id_prompts: bool
    # One request can ask for n samples (else the engine sends n requests).
    samples_per_request: bool

    def body(self, request: SampleRequest) -> dict[str, object]: ...

    def parse(self, reply: object, request: SampleRequest, tokenize: Tokenize) -> list[Completion]: ...


def _finish(reason: object, where: str) -> str:
    """"stop" or "length"; servers also say "eos" or "abort" (a request the server gave up on)."""
    if reason in ("stop", "eos"):
        return "stop"
    if reason == "length":
        return "length"
    raise MalformedReply(f"{where}: finish reason {reason!r} (expected \"stop\" or \"length\"); the server may have "
                         "aborted the request — check its logs")


def _choices(reply: object, expected: int, where: str) -> list[dict[str, object]]:
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
        raise MalformedReply(f"{where}: the reply has no list of choices: {str(reply)[:200]}")
    if len(choices) != expected:
        raise MalformedReply(f"{where}: {len(choices)} choices for {expected} samples asked for")
    if all("index" in choice for choice in choices):
        choices = sorted(choices, key=lambda choice: choice["index"] if isinstance(choice["index"], int) else -1)
        if [choice["index"] for choice in choices] != list(range(expected)):
            raise MalformedReply(f"{where}: choice indices {[c['index'] for c in choices]} are not 0..{expected - 1}")
    return choices


def _floats(values: object, where: str) -> list[float]:
    if not isinstance(values, list) or not all(isinstance(value, (int, float)) and not isinstance(value, bool)
                                               for value in values):
        raise MalformedReply(f"{where}: token log-probabilities missing or not numbers: {str(values)[:120]}")
    return [float(value) for value in values]


def _logprobs_block(choice: dict[str, object], where: str) -> dict[str, object]:
    block = choice.get("logprobs")
    if not isinstance(block, dict):
        raise MalformedReply(f"{where}: the choice has no logprobs (the server must return the sampled tokens' "
                             "log-probabilities; is logprobs supported and enabled?)")
    return block


def _sampling_fields(request: SampleRequest) -> dict[str, object]:
    params = request.params
    return {"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "seed": request.seed}


class VLLMCompletions:
    """vLLM's ``/v1/completions`` (checked against vLLM 0.32's protocol and serving code)."""

    path = "v1/completions"
    token_id_prompts = True
    samples_per_request = True

    def body(self, request: SampleRequest) -> dict[str, object]:
        return {"model": request.model, "prompt": request.prompt_ids, "n": request.n, **_sampling_fields(request),
                "logprobs": 0, "return_tokens_as_token_ids": True, "stop_token_ids": list(request.stop_token_ids),
                "skip_special_tokens": False, "cache_salt": request.cache_salt}

    def parse(self, reply: object, request: SampleRequest, tokenize: Tokenize) -> list[Completion]:
        where = f"{self.path} reply"
        completions = []
        for choice in _choices(reply, request.n, where):
            block = _logprobs_block(choice, where)
            tokens = block.get("tokens")
            if not isinstance(tokens, list) or not all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
                raise MalformedReply(f"{where}: tokens are not \"token_id:<id>\" strings ({str(tokens)[:120]}); the "
                                     "server ignored return_tokens_as_token_ids — use engine = \"openai\" for it")
            try:
                ids = [int(token[9:]) for token in tokens]
            except ValueError as error:
                raise MalformedReply(f"{where}: a token id is not an integer: {error}") from None
            logprobs = _floats(block.get("token_logprobs"), where)
            completions.append(_checked(ids, logprobs, _finish(choice.get("finish_reason"), where), where))
        return completions


class SGLangGenerate:
    """SGLang's native ``/generate`` (checked against SGLang 0.5's io_struct and tokenizer manager)."""

    path = "generate"
    token_id_prompts = True
    samples_per_request = True

    def body(self, request: SampleRequest) -> dict[str, object]:
        params = request.params
        sampling = {"max_new_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
                    "n": request.n, "stop_token_ids": list(request.stop_token_ids), "sampling_seed": request.seed,
                    "skip_special_tokens": False, "no_stop_trim": True}
        body: dict[str, object] = {"input_ids": request.prompt_ids, "sampling_params": sampling,
                                   "return_logprob": True, "logprob_start_len": -1, "cache_salt": request.cache_salt}
        if request.adapter:
            body["lora_path"] = request.adapter
        return body

    def parse(self, reply: object, request: SampleRequest, tokenize: Tokenize) -> list[Completion]:
        where = f"{self.path} reply"
        outputs = reply if isinstance(reply, list) else [reply]
        if len(outputs) != request.n or not all(isinstance(output, dict) for output in outputs):
            raise MalformedReply(f"{where}: {len(outputs)} outputs for {request.n} samples asked for")
        return [self._one(output, where) for output in outputs if isinstance(output, dict)]

    def _one(self, output: dict[str, object], where: str) -> Completion:
        meta = output.get("meta_info")
        if not isinstance(meta, dict):
            raise MalformedReply(f"{where}: an output has no meta_info: {str(output)[:200]}")
        triples = meta.get("output_token_logprobs")
        if not isinstance(triples, list) or not all(isinstance(t, list) and len(t) >= 2 for t in triples):
            raise MalformedReply(f"{where}: meta_info.output_token_logprobs is missing or not [logprob, token_id, "
                                 "text] triples (was return_logprob sent?)")
        logprobs = _floats([triple[0] for triple in triples], where)
        ids = [triple[1] for triple in triples]
        if not all(isinstance(token, int) and not isinstance(token, bool) for token in ids):
            raise MalformedReply(f"{where}: a token id in output_token_logprobs is not an integer")
        output_ids = output.get("output_ids")
        if isinstance(output_ids, list) and output_ids != ids:
            raise MalformedReply(f"{where}: output_ids and the ids in output_token_logprobs disagree")
        reason = meta.get("finish_reason")
        kind = reason.get("type") if isinstance(reason, dict) else reason
        return _checked(ids, logprobs, _finish(kind, where), where)


@dataclass
class OpenAICompletions:
    """``/v1/completions`` of any OpenAI-compatible server; ``token_id_prompts`` says
    whether it takes a prompt as token ids."""

    token_id_prompts: bool = True
    samples_per_request: bool = True
    path: str = "v1/completions"

    def body(self, request: SampleRequest) -> dict[str, object]:
        prompt: object = request.prompt_ids if self.token_id_prompts else request.prompt_text
        body = {"model": request.model, "prompt": prompt, **_sampling_fields(request), "logprobs": 1}
        if self.samples_per_request:
            body["n"] = request.n
        return body

    def parse(self, reply: object, request: SampleRequest, tokenize: Tokenize) -> list[Completion]:
        where = f"{self.path} reply"
        expected = request.n if self.samples_per_request else 1
        completions = []
        for choice in _choices(reply, expected, where):
            block = _logprobs_block(choice, where)
            logprobs = _floats(block.get("token_logprobs"), where)
            finish = _finish(choice.get("finish_reason"), where)
            text = choice.get("text")
            if not isinstance(text, str):
                raise MalformedReply(f"{where}: a choice has no text")
            completions.append(_checked(_text_ids(text, logprobs, finish, request, tokenize, where), logprobs,
                                        finish, where))
        return completions


def _text_ids(text: str, logprobs: list[float], finish: str, request: SampleRequest, tokenize: Tokenize,
              where: str) -> list[int]:
    """Token ids for a completion the server returned as text: its tokenization, plus the
    end-of-turn token when the server counted one more log-probability than that."""
    ids = tokenize(text)
    if finish == "stop" and len(ids) + 1 == len(logprobs) and request.stop_token_ids:
        ids = [*ids, request.stop_token_ids[0]]
    if len(ids) != len(logprobs):
        raise MalformedReply(f"{where}: the completion's text tokenizes to {len(ids)} tokens but the server gave "
                             f"{len(logprobs)} log-probabilities, so its tokens cannot be recovered exactly — the "
                             "server's tokenizer differs from [model] model's, or use a server that returns token "
                             "ids (vllm, sglang)")
    return ids


def _checked(ids: list[int], logprobs: list[float], finish: str, where: str) -> Completion:
    if len(ids) != len(logprobs):
        raise MalformedReply(f"{where}: {len(ids)} tokens but {len(logprobs)} log-probabilities")
    if not all(-math.inf < value <= 1e-6 for value in logprobs):  # NaN fails every comparison
        raise MalformedReply(f"{where}: a log-probability is NaN, infinite or positive: {logprobs[:8]}")
    return Completion(ids, logprobs, finish)



class MLXCompletions:
    """``mlx_lm.server``'s ``/v1/completions`` (checked against mlx-lm 0.32's server)."""

    path = "v1/completions"
    token_id_prompts = False
    samples_per_request = False  # it answers one choice whatever n asks

    def body(self, request: SampleRequest) -> dict[str, object]:
        return {"model": request.model, "prompt": request.prompt_text, **_sampling_fields(request), "logprobs": True}

    def parse(self, reply: object, request: SampleRequest, tokenize: Tokenize) -> list[Completion]:
        where = f"{self.path} reply"
        (choice,) = _choices(reply, 1, where)
        content = _logprobs_block(choice, where).get("content")
        if not isinstance(content, list) or not all(isinstance(entry, dict) for entry in content):
            raise MalformedReply(f"{where}: logprobs.content is not a list of {{id, logprob}} entries")
        ids = [entry.get("id") for entry in content]
        if not all(isinstance(token, int) and not isinstance(token, bool) for token in ids):
            raise MalformedReply(f"{where}: a token id in logprobs.content is not an integer")
        logprobs = _floats([entry.get("logprob") for entry in content], where)
        return [_checked([int(token) for token in ids if isinstance(token, int)], logprobs,
                         _finish(choice.get("finish_reason"), where), where)]
