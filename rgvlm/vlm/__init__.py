"""LVLM clients: one interface (:mod:`rgvlm.vlm.base`), three backends, one response cache.

:func:`make_clients` builds the stage-1 and stage-2 clients from the ``labelling`` section of
``params.yaml`` and checks that they can work (key present, server reachable, model path
present) before any labelling starts.
"""

from __future__ import annotations

from pathlib import Path

from rgvlm.params import LabellingConfig, ParamError
from rgvlm.vlm.base import FailurePolicy, LVLMClient, LVLMError, LVLMRequest, LVLMResponse
from rgvlm.vlm.cache import UsageCounter


def _make_one(config: LabellingConfig, model: str | None) -> LVLMClient:
    if config.backend == "scripted":
        from rgvlm.vlm.scripted import ScriptedAnnotator, ScriptedNoise

        try:
            return ScriptedAnnotator(ScriptedNoise(**config.scripted), scoring=config.scoring,
                                     token_reduce=config.token_reduce)
        except (TypeError, ValueError) as error:
            raise ParamError("labelling.scripted", config.scripted, f"valid scripted-annotator noise settings ({error})") from error
    if config.backend == "transformers":
        from rgvlm.vlm.transformers_backend import TransformersClient

        try:
            return TransformersClient(model, device=config.device, dtype=config.dtype, batch_size=config.batch_size,
                                      scoring=config.scoring, token_reduce=config.token_reduce)
        except LVLMError as error:
            raise ParamError("labelling.model", model, f"an existing model directory or a hub id ({error})") from error
    from rgvlm.vlm.openai_backend import OpenAIClient

    try:
        client = OpenAIClient(config.base_url, model, api_key_env=config.api_key_env,
                              max_concurrency=config.max_concurrency, timeout_s=config.timeout_s,
                              deadline_s=config.deadline_s, max_retries=config.max_retries,
                              scoring=config.scoring, token_reduce=config.token_reduce,
                              top_logprobs=config.top_logprobs)
    except LVLMError as error:
        raise ParamError("labelling.api_key_env", config.api_key_env, f"a set environment variable ({error})") from error
    try:
        client.check_reachable()
    except LVLMError as error:
        raise ParamError("labelling.base_url", config.base_url, f"a reachable server ({error})") from error
    return client


def make_clients(config: LabellingConfig) -> tuple[LVLMClient, LVLMClient]:
    """(stage-1, stage-2) clients; stage 2 reuses stage 1's unless ``stage2_model`` is set."""
    stage1 = _make_one(config, config.model)
    if not config.stage2_model or config.stage2_model == config.model:
        return stage1, stage1
    return stage1, _make_one(config, config.stage2_model)


def cached_clients(config: LabellingConfig, cache_dir) -> tuple[LVLMClient, LVLMClient, UsageCounter]:
    """:func:`make_clients`, each answering through the response cache in ``cache_dir``, and
    the counter of calls, hits and tokens both share (what a labelling stage's cost reports)."""
    from rgvlm.vlm.cache import CachedClient, ResponseCache, UsageCounter

    stage1, stage2 = make_clients(config)
    usage = UsageCounter()
    cache = ResponseCache(cache_dir)
    cached1 = CachedClient(stage1, cache, usage)
    cached2 = cached1 if stage2 is stage1 else CachedClient(stage2, cache, usage)
    return cached1, cached2, usage


def failure_policy(config: LabellingConfig, cache_dir) -> FailurePolicy:
    """``labelling.max_failure_rate`` for clients answering through the response cache in
    ``cache_dir``: a labelling method handed it fails when more queries end unanswered, naming
    that directory, where the raw answers are."""
    return FailurePolicy(config.max_failure_rate, str(Path(cache_dir)))


__all__ = ["FailurePolicy", "LVLMClient", "LVLMError", "LVLMRequest", "LVLMResponse", "cached_clients",
           "failure_policy", "make_clients"]
