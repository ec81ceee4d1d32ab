"""Local LVLM backend: a Hugging Face ``transformers`` image-text-to-text model.

``TransformersClient(model)`` loads ``AutoProcessor`` + ``AutoModelForImageTextToText`` from a
local directory or a hub id and answers :class:`~rgvlm.vlm.base.LVLMRequest` batches with greedy
decoding. Each request becomes ``[system?] + user[image..., text]``, rendered with the
processor's chat template (``add_generation_prompt=True``); batches are left-padded so that
every row's new tokens start at the same position, and only those new tokens are decoded.

Token-probability scoring (``scoring="token_probs"``, :mod:`rgvlm.vlm.token_probs`): a request
with a ``template`` is not generated; each slot's candidates are scored by teacher forcing, one
batched forward pass over ``[prompt + answer so far + candidate + terminator]`` rows (right-padded,
so every row's positions are those of the unpadded sequence), summing each candidate's tokens'
log-probabilities. Requests without a template (stage-1 analyses) are generated as usual.

Device/dtype: ``device="auto"`` is CUDA when available, else CPU; ``dtype="auto"`` is bfloat16
on CUDA and float32 on CPU (any ``torch`` dtype name is accepted otherwise).

Qwen2-VL / Qwen2.5-VL without torchvision: their processors carry a video processor that
needs torchvision, so ``AutoProcessor`` fails (``Qwen2VLVideoProcessor requires the Torchvision
library`` or ``VIDEO_PROCESSOR_MAPPING ... _extra_content``). The client then builds the same
processor class from ``AutoImageProcessor`` + ``AutoTokenizer`` with no video processor (images
work, videos do not) and takes the chat template from the tokenizer or the repository's
``chat_template.jinja`` / ``chat_template.json``. This path is tested with a tiny random
Qwen2-VL built offline (``tests/support/tiny_models.py``), not with real Qwen weights.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from rgvlm.vlm.base import LVLMError, LVLMRequest, LVLMResponse
from rgvlm.vlm.token_probs import ChoiceQuery, answer_by_template, normalise, scoring_settings, split_scored


def _looks_like_path(model: str) -> bool:
    """Absolute, relative (``./x``, ``../x``), home (``~``), Windows-style or deeper than ``owner/name``.

    A plain ``owner/name`` is taken as a hub id unless it exists on disk.
    """
    return (
        Path(model).is_absolute()
        or model.startswith((".", "~"))
        or "\\" in model
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
    )


class TransformersClient:
    """Greedy, batched generation with a local ``transformers`` vision-language model."""

    backend = "transformers"

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 4,
        max_new_tokens: int = 512,
        trust_remote_code: bool = False,
        scoring: str = "generate",
        token_reduce: str = "expectation",
    ) -> None:
        model = str(model)
        self._scoring_settings = scoring_settings(scoring, token_reduce)  # checks both first
        self.scoring, self.token_reduce = scoring, token_reduce
        # A hub id is "owner/name"; anything absolute, relative ("./x", "../x") or with a
        # backslash, or an "owner/name" that exists on disk, is a local path.
        if _looks_like_path(model):
            path = Path(model).expanduser()
            if not path.exists():
                raise LVLMError(
                    f"local model path {model!r} does not exist (resolved to {path.resolve()}); "
                    "download or build the model there first, or pass a Hugging Face hub id such as "
                    "'HuggingFaceTB/SmolVLM-256M-Instruct'"
                )
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.trust_remote_code = bool(trust_remote_code)

        import torch
        from transformers import AutoModelForImageTextToText

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype, None)
            if not isinstance(torch_dtype, torch.dtype):
                raise ValueError(f"unknown dtype {dtype!r}")
        self.dtype = str(torch_dtype).removeprefix("torch.")

        try:
            self.processor = self._load_processor()
            self._model = AutoModelForImageTextToText.from_pretrained(
                model, dtype=torch_dtype, trust_remote_code=self.trust_remote_code
            )
        except LVLMError:
            raise
        except Exception as exc:  # noqa: BLE001 - surface any loading failure as a backend error
            raise LVLMError(f"could not load transformers model {model!r}: {type(exc).__name__}: {exc}") from exc
        self._model.to(self.device)
        self._model.eval()

        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._eos_ids = self._collect_eos_ids()

    # ------------------------------------------------------------------ loading
    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def _load_processor(self):
        from transformers import AutoProcessor, ProcessorMixin

        try:
            processor = AutoProcessor.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
        except (ImportError, ValueError, AttributeError, TypeError) as exc:
            if not _is_video_processor_failure(exc):
                raise
            return self._processor_without_video()
        if not isinstance(processor, ProcessorMixin) or not hasattr(processor, "image_processor"):
            # e.g. a saved Qwen2-VL whose processor could not be saved: AutoProcessor falls back to a
            # bare tokenizer that would silently drop the images.
            return self._processor_without_video()
        return processor

    def _processor_without_video(self):
        """Build the model's processor class from its image processor + tokenizer, no video processor."""
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

        config = AutoConfig.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
        try:
            processor_cls = PROCESSOR_MAPPING[type(config)]
        except KeyError as exc:
            raise LVLMError(f"no processor class known for {type(config).__name__} ({self.model!r})") from exc
        if "video_processor" not in processor_cls.get_attributes():
            raise LVLMError(f"could not load the processor of {self.model!r} (and it has no video processor to skip)")

        class _NoVideo(processor_cls):
            def check_argument_for_proper_class(self, argument_name, argument):
                if argument is None and argument_name == "video_processor":
                    return None
                return super().check_argument_for_proper_class(argument_name, argument)

        _NoVideo.__name__ = processor_cls.__name__
        image_processor = AutoImageProcessor.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
        template = _read_chat_template(self.model) or getattr(tokenizer, "chat_template", None)
        return _NoVideo(
            image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=template
        )

    def _collect_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self._model, "generation_config", None), self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if value is None:
                continue
            ids.update(value if isinstance(value, (list, tuple)) else [value])
        return {int(i) for i in ids}

    # ------------------------------------------------------------------ protocol
    def generation_settings(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model,
            "do_sample": False,
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "dtype": self.dtype,
            **self._scoring_settings,
        }

    def generate(self, requests: list[LVLMRequest]) -> list[LVLMResponse]:
        scored, generated = split_scored(requests, self.scoring)
        out: list[LVLMResponse | None] = [None] * len(requests)
        if scored:
            answers = answer_by_template([requests[i] for i in scored], self.candidate_logprobs, self.token_reduce,
                                         self._prompt_tokens)
            for i, answer in zip(scored, answers, strict=True):
                out[i] = answer
        for start in range(0, len(generated), self.batch_size):
            chunk = generated[start : start + self.batch_size]
            for i, answer in zip(chunk, self._generate_batch([requests[i] for i in chunk]), strict=True):
                out[i] = answer
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ token probabilities
    def candidate_probs(self, queries: list[ChoiceQuery]) -> list[list[float]]:
        """The probability of each candidate of each query, normalised over its candidates."""
        return [normalise(lp) for lp in self.candidate_logprobs(queries)]

    def candidate_logprobs(self, queries: list[ChoiceQuery]) -> list[list[float]]:
        """log P(candidate + terminator | prompt, prefix) of each candidate of each query: the sum of
        its tokens' log-probabilities, teacher-forced (unnormalised)."""
        return [self._query_logprobs(q) for q in queries]

    def _prompt_text(self, request: LVLMRequest) -> str:
        try:
            return self.processor.apply_chat_template(self._messages(request), tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - e.g. no chat template
            raise LVLMError(f"{self.model}: could not render the chat template: {type(exc).__name__}: {exc}") from exc

    def _prompt_tokens(self, request: LVLMRequest) -> int:
        return int(self._inputs([self._prompt_text(request)], request)["input_ids"].shape[1])

    def _inputs(self, texts: list[str], request: LVLMRequest):
        """Processor inputs of ``texts`` (each shown ``request``'s images), right-padded, on the device."""
        import torch

        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if request.images:
            images = [_decode_png(b) for b in request.images]
            kwargs["images"] = [list(images) for _ in texts]
        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "right"
        try:
            inputs = self.processor(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise LVLMError(f"{self.model}: could not prepare inputs: {type(exc).__name__}: {exc}") from exc
        finally:
            tok.padding_side = side
        inputs = inputs.to(self.device)
        for key, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[key] = value.to(self._model.dtype)
        return inputs

    def _query_logprobs(self, query: ChoiceQuery) -> list[float]:
        import torch

        # Whitespace at the end of the answer so far goes with the candidate: tokenizers attach a
        # space to the word after it ("Ġ7"), so "[3, " + "7" must be scored as "[3," + " 7".
        prefix = query.prefix.rstrip()
        space = query.prefix[len(prefix):]
        context = self._prompt_text(query.request) + prefix
        context_len = int(self._inputs([context], query.request)["attention_mask"][0].sum())
        texts = [context + space + candidate + query.terminator for candidate in query.candidates]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            inputs = self._inputs(chunk, query.request)
            try:
                with torch.inference_mode():
                    logits = self._model(**inputs).logits
            except Exception as exc:  # noqa: BLE001
                raise LVLMError(f"{self.model}: forward pass failed: {type(exc).__name__}: {exc}") from exc
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            for row in range(len(chunk)):
                length = int(mask[row].sum())
                if length <= context_len:
                    raise LVLMError(f"{self.model}: candidate {query.candidates[start + row]!r} adds no token")
                positions = torch.arange(context_len, length, device=ids.device)
                out.append(float(logprobs[row, positions - 1, ids[row, positions]].sum()))
        return out

    # ------------------------------------------------------------------ internals
    def _messages(self, request: LVLMRequest) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
        content: list[dict[str, Any]] = [{"type": "image"} for _ in request.images]
        content.append({"type": "text", "text": request.prompt})
        messages.append({"role": "user", "content": content})
        return messages

    def _generate_batch(self, batch: list[LVLMRequest]) -> list[LVLMResponse]:
        import time

        import torch

        try:
            texts = [
                self.processor.apply_chat_template(self._messages(r), tokenize=False, add_generation_prompt=True)
                for r in batch
            ]
        except Exception as exc:  # noqa: BLE001 - e.g. no chat template
            raise LVLMError(f"{self.model}: could not render the chat template: {type(exc).__name__}: {exc}") from exc
        images = [[_decode_png(b) for b in r.images] for r in batch]
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if any(images):
            if not all(images):
                # Processors want images for every row or none; rows without images get none via
                # their own call, so split mixed batches.
                return [resp for r in batch for resp in self._generate_batch([r])]
            kwargs["images"] = images
        try:
            inputs = self.processor(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise LVLMError(f"{self.model}: could not prepare inputs: {type(exc).__name__}: {exc}") from exc
        inputs = inputs.to(self.device)
        for key, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[key] = value.to(self._model.dtype)
        limits = [max(1, min(r.max_new_tokens, self.max_new_tokens)) for r in batch]
        max_new = max(limits)
        pad_id = self.tokenizer.pad_token_id
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                generated = self._model.generate(
                    **inputs,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=max_new,
                    pad_token_id=pad_id,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
        except Exception as exc:  # noqa: BLE001
            raise LVLMError(f"{self.model}: generate failed: {type(exc).__name__}: {exc}") from exc
        latency = time.perf_counter() - started
        prompt_len = inputs["input_ids"].shape[1]
        attention = inputs.get("attention_mask")
        responses = []
        for row, limit in enumerate(limits):
            new = generated[row, prompt_len:].tolist()[:limit]
            finish = "length"
            for i, tok_id in enumerate(new):
                if tok_id in self._eos_ids:
                    new, finish = new[: i + 1], "stop"
                    break
            n_prompt = int(attention[row].sum()) if attention is not None else prompt_len
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            responses.append(
                LVLMResponse(
                    text=text.strip(),
                    prompt_tokens=n_prompt,
                    completion_tokens=len(new),
                    meta={"finish_reason": finish, "latency_s": latency, "batch_size": len(batch)},
                )
            )
        return responses


def _decode_png(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def _is_video_processor_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(
        key in text
        for key in (
            "VideoProcessor",
            "video_processor",
            "VIDEO_PROCESSOR",
            "Torchvision",
            "torchvision",
            "_extra_content",
        )
    )


def _read_chat_template(model: str) -> str | None:
    """The processor-level chat template (``chat_template.jinja`` or ``chat_template.json``), if any."""
    for name in ("chat_template.jinja", "chat_template.json"):
        path = Path(model).expanduser() / name
        if not path.is_file():
            try:
                from transformers.utils import cached_file

                found = cached_file(model, name, _raise_exceptions_for_missing_entries=False)
            except Exception:  # noqa: BLE001 - no such file / offline
                found = None
            if not found:
                continue
            path = Path(found)
        text = path.read_text(encoding="utf-8")
        if name.endswith(".json"):
            text = json.loads(text).get("chat_template")
        if text:
            return text
    return None
