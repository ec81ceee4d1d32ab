"""One interface for every LVLM backend (local transformers, OpenAI-compatible HTTP, scripted).

A backend answers a list of :class:`LVLMRequest` with one :class:`LVLMResponse` each, in
order. Requests carry images as PNG bytes so that the response cache can key on their
content and every backend sees exactly the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rgvlm.vlm.token_probs import AnswerTemplate


@dataclass(frozen=True)
class LVLMRequest:
    """One chat turn: an optional system text, then images (in order) and the user text."""

    prompt: str
    images: tuple[bytes, ...] = ()  # PNG-encoded frames, shown before the text, in order
    system: str | None = None
    max_new_tokens: int = 512
    # Privileged ground truth for the scripted annotator only: never sent to a real backend
    # and not part of the cache key (prompt and images already identify the query).
    annotation: Any = field(default=None, compare=False, repr=False)
    # The answer's format as a forced-decoding template (rgvlm.vlm.token_probs): read only by a
    # backend with ``scoring: token_probs``, which then scores the template's slots instead of
    # generating, and only then part of the cache key.
    template: AnswerTemplate | None = field(default=None, compare=False, repr=False)


@dataclass
class LVLMResponse:
    """The model's text and what it cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. retries, latency, finish reason


@dataclass(frozen=True)
class FailurePolicy:
    """How many queries may end without a usable answer (after every re-ask, so they get the
    fallback or are dropped) before a labelling stage fails (``labelling.max_failure_rate``), and
    where the raw answers are, for the message. Built by :func:`rgvlm.vlm.failure_policy`, handed
    by the labelling stage to the method's ``label`` and enforced by
    :func:`rgvlm.rewards.base.check_failure_rate`."""

    max_failure_rate: float
    raw_answers: str  # the response cache's directory


class LVLMError(RuntimeError):
    """A backend could not produce an answer (after its retries)."""


@runtime_checkable
class LVLMClient(Protocol):
    """What the labelling code needs from a backend."""

    backend: str  # "transformers", "openai" or "scripted"
    model: str  # model path, hub id or served name

    def generation_settings(self) -> dict[str, Any]:
        """Everything besides the request that changes the answer (part of the cache key)."""
        ...

    def generate(self, requests: list[LVLMRequest]) -> list[LVLMResponse]:
        """Answer every request, in order."""
        ...
