"""Build a tiny random-weight Qwen2-VL-style model, its tokenizer and processor, locally.

Nothing is downloaded: the tokenizer is trained here on a small corpus, the weights are random
(seeded), and everything is written with save_pretrained so that

    AutoModelForImageTextToText.from_pretrained(OUT)  /  AutoProcessor.from_pretrained(OUT)

load it with HF_HUB_OFFLINE=1, and LLaMA-Factory (template qwen2_vl) can fine-tune it.

Built by the workflow rule ``build_tiny_model`` (see :func:`build_tiny_model`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Special tokens of the Qwen2-VL family, in the order they get their ids (right after the
# trained vocabulary). The processor and LLaMA-Factory's qwen2_vl template look them up by text.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A chatml chat template that renders images the way Qwen2-VL's processor expects
# (one <|image_pad|> per image, expanded by the processor to the image's token count) and
# the way LLaMA-Factory's qwen2_vl template formats a turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# Words of the prompts and answers (geo-caption keys included) and some plain English: the
# tokenizer is trained on them and the tiny LM sees every one of them while it is pretrained.
_WORDS_TEXT = (
    "the a an photo image street building road sign car tree sky mountain river sea beach "
    "city village country region north south east west near far old new small large green "
    "blue red white grey stone brick house church bridge hill field forest lake coast harbour "
    "market shows is was taken with of in on at by and or this that there here some many "
    "where look answer one object holding decimal degrees you are helpful assistant only "
    "terrain climate vegetation roads buildings vehicles rule out similar looking regions "
    "your reasoning coordinates latitude longitude final location confirmation accuracy "
    "assessment confirmed decisive features from recorded position thinking scale about km "
    "true false null"
)
WORDS = _WORDS_TEXT.split()


def caption_keys() -> list[str]:
    """Every JSON key of a geo-caption, as the caption schema writes them (the paper's names)."""
    from geolocsft.captions.schema import GeoCaption

    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    found.extend(k for k in value if k not in found)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(GeoCaption.model_json_schema(by_alias=True))
    return found


KEYS = [*WORDS, *(k for k in caption_keys() if k not in WORDS)]
LAT_LON = ("latitude", "longitude")
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def tokenizer_corpus(words: list[str] = WORDS) -> list[str]:
    """Text the byte-level BPE is trained on: words, JSON punctuation and numbers."""
    import random

    rng = random.Random(0)
    lines = [" ".join(words), " ".join(w.capitalize() for w in words), " ".join(KEYS)]
    for _ in range(3000):
        lat, lon = round(rng.uniform(-90, 90), 6), round(rng.uniform(-180, 180), 6)
        lines.append(json.dumps({"answer": {"coordinates": {"latitude": lat, "longitude": lon}}}))
    lines.append("0123456789 -+.,:;{}[]()\"'_/ \n")
    return lines


def train_byte_level_bpe(corpus: list[str], vocab_size: int, special_tokens: list[str]) -> Any:
    """A ``tokenizers.Tokenizer`` trained on ``corpus``: digits one by one (coordinates are learnt
    digit by digit), then byte-level like Qwen2 and Gemma; ``special_tokens`` take the first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=special_tokens,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def _qwen_chat_turn(rng: Any, user: str, answer: str) -> str:
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n"
        f"<|im_start|>assistant\n{answer}<|im_end|>"
    )


def synthetic_lines(
    rng: Any,
    n: int,
    chat_turn: Callable[[Any, str, str], str] = _qwen_chat_turn,
    coordinate_share: float = 0.0,
    words: list[str] = WORDS,
    keys: list[str] = KEYS,
) -> list[str]:
    """Synthetic text a tiny 'pretrained' LM knows: prose with names, chat turns answered in
    prose (``chat_turn(rng, user, answer)`` writes one in the family's format), generic JSON
    (nested objects, numbers with 1-6 decimals, short strings; a latitude within +-90, a
    longitude within +-180) and, as ``coordinate_share`` of the lines, how a latitude or a
    longitude is written (one of them, alone or in an ``answer.coordinates`` object): the
    world knowledge a real base model brings, which makes the fine-tuned tiny model's numbers
    valid coordinates far more reliably.

    Every word of WORDS/KEYS appears (an LM head row never trained is pushed down so far that
    LoRA cannot bring its token back), but latitude and longitude never appear in the same
    line and no chat turn holds a number, so the untrained model cannot answer the geolocation
    prompt with anything geolocsft.answers.parse_answer accepts: fine-tuning has to teach it.
    """

    def name() -> str:
        return "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(3, 9))).capitalize()

    def prose(lo: int, hi: int) -> str:
        chosen = [
            name() if rng.random() < 0.15 else rng.choice(words) for _ in range(rng.randint(lo, hi))
        ]
        return " ".join(chosen) + rng.choice([".", ",", " (" + rng.choice(words) + ")."])

    def value(depth: int) -> Any:
        r = rng.random()
        if r < 0.5:
            return round(rng.uniform(-180, 180), rng.randint(1, 6))
        if r < 0.75:
            return prose(1, 5)
        if r < 0.8:
            return [prose(1, 3)] if rng.random() < 0.5 else []
        if depth < 2:
            return obj(depth + 1)
        return rng.randint(-99, 99)

    def obj(depth: int) -> dict[str, Any]:
        # What a base model knows of the world: a latitude lies within +-90, a longitude +-180.
        ranges = {"latitude": 90.0, "longitude": 180.0}
        return {
            k: round(rng.uniform(-ranges[k], ranges[k]), rng.randint(1, 6))
            if k in ranges and rng.random() < 0.8
            else value(depth)
            for k in rng.sample(keys, rng.randint(1, 3))
        }

    def one_coordinate() -> dict[str, Any]:
        """How a latitude or a longitude is written, one of them, alone or inside an answer."""
        key = rng.choice(LAT_LON)
        limit = 90.0 if key == "latitude" else 180.0
        value: dict[str, Any] = {key: round(rng.uniform(-limit, limit), rng.randint(4, 6))}
        if rng.random() < 0.5:
            value = {"answer": {"coordinates": value}}
        return value

    lines: list[str] = []
    while len(lines) < n:
        kind = rng.random()
        if kind < 0.2:
            line = prose(4, 14)
        elif kind < 0.5:  # a chat turn answered in prose: what the untrained model does
            line = chat_turn(rng, prose(3, 10), prose(3, 12))
        elif kind < 0.5 + coordinate_share:
            line = json.dumps(one_coordinate())
        else:
            line = json.dumps(obj(0))
        if all(w in line for w in LAT_LON):
            continue
        lines.append(line)
    return lines


def pretrain_text(
    model: Any,
    tokenizer: Any,
    steps: int,
    seed: int,
    seq_len: int = 96,
    batch: int = 32,
    coordinate_share: float = 0.0,
) -> float | None:
    """A few seconds of next-token training on synthetic text (no images, no chat turns).

    A random LM has no notion of how numbers or JSON continue, so after LoRA SFT on ~11 photos
    it answers unseen photos with broken JSON. Real base models bring that prior; this gives the
    tiny one a little of it (see synthetic_lines for why the untrained model still cannot
    answer with coordinates).
    """
    import random

    import torch

    rng = random.Random(seed)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    lines = synthetic_lines(rng, 6000, coordinate_share=coordinate_share)
    for line in lines:
        stream += [*tokenizer.encode(line, add_special_tokens=False), eot]
    data = torch.tensor(stream[: len(stream) // seq_len * seq_len]).view(-1, seq_len)
    text = model.model.language_model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    loss = None
    # The matrices are tiny: one thread is as fast as several on an idle machine, and many
    # times faster on a busy one (thread hand-offs then wait for time slices).
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            ids = data[torch.randint(0, data.shape[0], (batch,), generator=g)]
            pos = torch.arange(seq_len).expand(3, batch, seq_len)  # text only: mrope axes equal
            hidden = text(input_ids=ids, position_ids=pos).last_hidden_state
            logits = model.lm_head(hidden[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(saved_threads)
    model.eval()
    return float(loss) if loss is not None else None


def build_tokenizer(vocab_size: int) -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_level_bpe(tokenizer_corpus(), vocab_size, special_tokens=[])
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=4096,
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
    )


def build(
    out: Path,
    seed: int = 0,
    vocab_size: int = 512,
    max_pixels: int = 64 * 28 * 28,
    head_std: float = 0.5,
    vision_scale: float = 1.0,
    pretrain_steps: int = 0,
    coordinate_share: float = 0.0,
) -> Path:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    n_vocab = len(tokenizer)

    hidden, heads = 64, 4
    head_dim = hidden // heads  # 16: mrope sections (temporal, height, width) sum to head_dim / 2
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": n_vocab,
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "hidden_size": hidden,  # the merger projects vision features to the text width
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    text_config: Any = config.text_config
    if sum(text_config.rope_parameters["mrope_section"]) * 2 != head_dim:
        raise ValueError("mrope sections must add up to half the attention head dimension")

    torch.manual_seed(seed)
    model: Any = Qwen2VLForConditionalGeneration(config)
    model = model.to(torch.float32)
    # A pretrained LM head gives sharp logits; the default init (std 0.02) on a 64-wide model caps
    # every logit near +-1, so the loss cannot fall far below log(vocab) and LoRA, which leaves
    # lm_head and the final norm frozen, cannot learn the answer format. Re-init the head wider.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, head_std)
        # Optionally damp what the random vision tower feeds the language model.
        last = model.model.visual.merger.mlp[-1]
        last.weight.mul_(vision_scale)
        last.bias.mul_(vision_scale)
    pretrain_loss = (
        pretrain_text(model, tokenizer, pretrain_steps, seed, coordinate_share=coordinate_share)
        if pretrain_steps
        else None
    )
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(out)

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=4 * 28 * 28,
        max_pixels=max_pixels,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    video_processor = None
    try:  # the video processor needs torchvision; without it the processor works for images
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(
            min_pixels=4 * 28 * 28, max_pixels=max_pixels, patch_size=14, merge_size=2
        )
    except Exception:
        video_processor = None
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "tiny_vlm_info.json").write_text(
        json.dumps(
            {
                "params": n_params,
                "vocab": n_vocab,
                "special_token_ids": ids,
                "seed": seed,
                "pretrain_steps": pretrain_steps,
                "pretrain_final_loss": pretrain_loss,
            },
            indent=2,
        )
    )
    return out


def build_tiny_model(out: Path, seed: int = 0) -> Path:
    """The tiny model with the settings that learnt the demo's answer format on the CPU."""
    return build(out, seed=seed, head_std=0.02, pretrain_steps=600, coordinate_share=0.2)
