"""Tiny, randomly initialised vision-language models built offline, for tests and benchmarks.

``build_tiny_vlm(kind, directory)`` writes a model + processor to ``directory`` (with
``save_pretrained``) and returns it; it loads back by path with ``AutoProcessor`` /
``AutoModelForImageTextToText`` (LLaVA, Idefics3). Nothing is downloaded: the tokenizer
is a byte-level BPE trained on a few sentences, the configs are written in code and the
weights come from ``torch.manual_seed(0)``, so the same kind always gives the same model.

Kinds: ``"llava"``, ``"idefics3"``, ``"qwen2_vl"``. Qwen2-VL's processor cannot be built
or saved without torchvision (its video processor), so for ``qwen2_vl`` only the
tokenizer, the image processor and the chat template are saved next to the model; the
backend rebuilds the processor from them (see ``rgvlm.vlm.transformers_backend``).
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("llava", "idefics3", "qwen2_vl")

_SENTENCES = [
    "The agent moves forward and turns left toward the green goal square.",
    "Frame one shows the red key; frame two shows the locked yellow door.",
    "Answer with a single number between 0 and 1.",
    "Is the agent closer to the goal in the second image than in the first?",
    "A grid world with walls, a door, a key, a ball and a box.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]

# How each architecture shows one image in the rendered prompt (the processor expands it).
_IMAGE_TEXT = {
    "llava": "<image>",
    "idefics3": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}

_SPECIAL = {
    "llava": ["<image>"],
    "idefics3": ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
    "qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
}


def chat_template(image_text: str) -> str:
    """A minimal chat template: ``<|role|>`` + content parts + ``<|end|>`` per message."""
    return (
        "{% for message in messages %}<|{{ message['role'] }}|>"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}"
        + image_text
        + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )


def _byte_level_bpe(special_tokens: list[str]):
    """A byte-level BPE (vocab ~300) trained on :data:`_SENTENCES`, the tokenizer of every tiny model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_SENTENCES, trainer=trainer)
    return tok


def build_tokenizer(kind: str):
    """A byte-level BPE tokenizer (vocab ~300) with the special tokens ``kind`` needs."""
    from transformers import PreTrainedTokenizerFast

    base = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = _byte_level_bpe(base)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        padding_side="left",
        extra_special_tokens={"role_" + t.strip("<|>"): t for t in base[3:]},
    )
    fast.add_special_tokens({"additional_special_tokens": _SPECIAL[kind]})
    fast.chat_template = chat_template(_IMAGE_TEXT[kind])
    return fast


def _llama(vocab: int, tok, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **extra,
    )


def _build_llava(tok):
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaImageProcessorPil, LlavaProcessor

    image_processor = LlavaImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=tok.chat_template,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=_llama(len(tok), tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return cfg, processor


def _build_idefics3(tok):
    from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor, Idefics3VisionConfig

    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=tok.chat_template
    )
    vision = Idefics3VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    cfg = Idefics3Config(
        vision_config=vision,
        text_config=_llama(len(tok), tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,  # (32 / 8)^2 / 2^2 = 4 tokens per image tile
        pad_token_id=tok.pad_token_id,
    )
    return cfg, processor


def _build_qwen2_vl(tok):
    from transformers import Qwen2VLConfig, Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8, max_pixels=32 * 32
    )
    text = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    vision = {
        "depth": 1,
        "embed_dim": 32,
        "hidden_size": 32,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 4,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    cfg = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    return cfg, image_processor


def build_tiny_vlm(kind: str, directory: Path) -> Path:
    """Build the tiny ``kind`` model, save it (model + processor) under ``directory``, return it."""
    import torch
    from transformers import AutoModelForImageTextToText

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(kind)
    cfg, processor = {"llava": _build_llava, "idefics3": _build_idefics3, "qwen2_vl": _build_qwen2_vl}[kind](tok)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.eval()
    model.save_pretrained(directory)
    if kind == "qwen2_vl":  # the processor itself needs torchvision to build/save: save its parts
        tok.save_pretrained(directory)
        processor.save_pretrained(directory)  # the image processor
    else:
        processor.save_pretrained(directory)
    return directory


def build_tiny_clip(directory: Path) -> Path:
    """Build a tiny random ``CLIPModel`` + ``CLIPProcessor``, save them under ``directory``, return it.

    For the embedding reward's CLIP path (``rgvlm.methods.embedding``): it loads back by path
    with ``AutoModel`` / ``AutoProcessor`` (``local_files_only``), like a real CLIP checkpoint.
    Nothing is downloaded: the tokenizer is a byte-level BPE trained on ``_SENTENCES`` that
    wraps every text in ``<s> ... </s>`` (CLIP pools the text at its end-of-text token, found
    by ``eos_token_id``), the image processor is the PIL one (no torchvision), and the weights
    come from ``torch.manual_seed(0)``, so every call builds the same model.
    """
    import torch
    from tokenizers import processors
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = _byte_level_bpe(["<pad>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    max_positions = 64
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="right",
        model_max_length=max_positions,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": max_positions,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
