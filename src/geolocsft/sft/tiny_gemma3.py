"""Build a tiny random-weight Gemma 3-style vision-language model, locally.

The second model family of the paper, shrunk so that the CPU demo and the tests can fine-tune it
in about a minute. Nothing is downloaded: the tokenizer is trained here (byte-level BPE, digits
one by one, the word lists of :mod:`geolocsft.sft.tiny_model`), the weights are random (seeded),
the language model is briefly "pretrained" on synthetic text, and everything is written with
``save_pretrained`` so that, with ``HF_HUB_OFFLINE=1``,

    AutoModelForImageTextToText.from_pretrained(OUT)  /  AutoProcessor.from_pretrained(OUT)

load it, and LLaMA-Factory (``template: gemma3``) can fine-tune it with LoRA.

What makes it Gemma 3 rather than Qwen2-VL:

* ``Gemma3ForConditionalGeneration``: a SigLIP vision tower (no pooling head), the
  ``Gemma3MultiModalProjector`` (average-pools the patch grid to ``mm_tokens_per_image`` soft
  tokens, RMS-norms and projects them) and a Gemma 3 text model (sliding/full attention layers,
  scaled embeddings tied to the LM head, ``query_pre_attn_scalar``).
* Gemma's special tokens, by text: ``<pad> <eos> <bos> <unk>`` (ids 0-3, as in Gemma),
  ``<start_of_turn> <end_of_turn>``, and the image tokens ``<start_of_image> <end_of_image>
  <image_soft_token>``, the last three registered as the tokenizer's ``boi_token``,
  ``eoi_token`` and ``image_token`` (``Gemma3Processor`` and LLaMA-Factory's ``Gemma3Plugin``
  read them from there).
* Gemma 3's chat template:
  ``<bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n``, a system message folded
  into the first user turn, an image rendered as ``<start_of_image>`` which ``Gemma3Processor``
  expands to ``\\n\\n<start_of_image>`` + ``image_seq_length`` x
  ``<image_soft_token>`` + ``<end_of_image>\\n\\n`` (exactly what LLaMA-Factory's gemma3 template
  writes in training).
* The tokenizer's EOS is ``<eos>`` while a chat turn ends with ``<end_of_turn>`` (as in the real
  Gemma 3 checkpoints): ``generation_config.json`` lists both as ``eos_token_id``, so a
  predictor takes its stop tokens from ``model.generation_config`` rather than from a constant.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

from geolocsft.sft.tiny_model import (
    WORDS,
    synthetic_lines,
    tokenizer_corpus,
    train_byte_level_bpe,
)

log = logging.getLogger(__name__)

#: Gemma's first four ids, in Gemma's order (pad 0, eos 1, bos 2, unk 3).
BASE_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
#: Chat and image tokens, added after the trained vocabulary. Looked up by text by
#: Gemma3Processor (boi/eoi/image token), LLaMA-Factory's gemma3 template (<bos>,
#: <start_of_turn>, <end_of_turn>) and its Gemma3Plugin (<image_soft_token>).
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]
BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
IMAGE_TOKENS = [BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN]
GEMMA_SPECIAL_TOKENS = [*BASE_SPECIAL_TOKENS, *TURN_TOKENS, *IMAGE_TOKENS]
END_OF_TURN = "<end_of_turn>"

#: Gemma 3's own chat template (google/gemma-3-*-it), unchanged but for whitespace.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ raise_exception('Invalid content type') }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

#: Role words of Gemma's chat format, added to the tokenizer's corpus.
ROLE_WORDS = ["user", "model", "system"]

# Geometry: a 128 x 128 image in 16 x 16 patches is an 8 x 8 grid, average-pooled (kernel 2)
# to 4 x 4 = 16 soft tokens per image.
IMAGE_SIZE = 128
PATCH_SIZE = 16
MM_TOKENS_PER_IMAGE = 16


def build_gemma_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE trained here, with Gemma's special tokens and chat template.

    It adds no ``<bos>`` by itself (the chat template and LLaMA-Factory's gemma3 template write
    it), so ``processor(text=chat_template_output)`` gives exactly the ids trained on.
    """
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_level_bpe(
        tokenizer_corpus([*WORDS, *ROLE_WORDS]),
        vocab_size,
        special_tokens=BASE_SPECIAL_TOKENS,  # ids 0-3, as in Gemma
    )
    tok.add_special_tokens([*TURN_TOKENS, *IMAGE_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        # Named model-specific tokens: tokenizer.boi_token / .eoi_token / .image_token(_id),
        # which Gemma3Processor and LLaMA-Factory's Gemma3Plugin read.
        extra_special_tokens={
            "boi_token": BOI_TOKEN,
            "eoi_token": EOI_TOKEN,
            "image_token": IMAGE_TOKEN,
        },
        model_max_length=4096,
        padding_side="right",
        chat_template=GEMMA_CHAT_TEMPLATE,
    )


def _gemma_chat_turn(image_turns: float) -> Any:
    """A Gemma chat turn answered in prose; ``image_turns`` of them open with an image block as
    Gemma3Processor writes it (here with the soft token's own embedding), so that the layout of
    the real prompt is familiar."""
    image_block = f"\n\n{BOI_TOKEN}{IMAGE_TOKEN * MM_TOKENS_PER_IMAGE}{EOI_TOKEN}\n\n"

    def turn(rng: random.Random, user: str, answer: str) -> str:
        image = image_block if rng.random() < image_turns else ""
        return (
            f"<start_of_turn>user\n{image}{user}<end_of_turn>\n"
            f"<start_of_turn>model\n{answer}<end_of_turn>\n"
        )

    return turn


def pretrain_gemma_text(
    model: Any,
    tokenizer: Any,
    steps: int,
    seed: int,
    seq_len: int = 96,
    batch: int = 32,
    lr: float = 3e-3,
    threads: int | None = 1,
    image_turns: float = 0.0,
    image_noise: bool = False,
    coordinate_share: float = 0.0,
) -> float | None:
    """A few seconds of next-token training of the language model on synthetic text.

    Each line is a document ``<bos> line <eos>``. Only the text model and the (tied) embedding
    and LM head learn; the vision tower and projector are not used.

    ``threads``: torch intra-op threads while training (restored after). The matrices are tiny,
    so one thread is as fast as several on an idle machine and 4-10x faster on a busy one
    (thread hand-offs then wait for time slices); ``None`` keeps torch's setting.
    """
    import torch

    rng = random.Random(seed)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream: list[int] = []
    lines = synthetic_lines(
        rng, 6000, _gemma_chat_turn(image_turns), coordinate_share=coordinate_share
    )
    for line in lines:
        stream += [bos, *tokenizer.encode(line, add_special_tokens=False), eos]
    data = torch.tensor(stream[: len(stream) // seq_len * seq_len]).view(-1, seq_len)
    text = model.model.language_model
    params = [p for p in text.parameters() if p.requires_grad]  # lm_head is tied to embed_tokens
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    loss = None
    start = time.perf_counter()
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            ids = data[torch.randint(0, data.shape[0], (batch,), generator=g)]
            if image_noise:
                embeds = text.embed_tokens(ids)
                rms = embeds.detach().pow(2).mean().sqrt()
                noise = torch.randn(embeds.shape, generator=g) * rms
                is_image = (ids == tokenizer.image_token_id).unsqueeze(-1)
                hidden = text(inputs_embeds=torch.where(is_image, noise, embeds)).last_hidden_state
            else:
                hidden = text(input_ids=ids).last_hidden_state
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
    if loss is None:
        return None
    log.info(
        "pretrained %d steps in %.1f s, final loss %.3f", steps, time.perf_counter() - start, loss
    )
    return float(loss.detach())


def build_gemma(
    out: Path,
    seed: int = 0,
    vocab_size: int = 512,
    pretrain_steps: int = 600,
    image_embedding_scale: float = 1.0,
    image_turns: float = 0.0,
    image_noise: bool = False,
    coordinate_share: float = 0.0,
) -> Path:
    """Build, pretrain and save the tiny Gemma 3-style model, its tokenizer and processor.

    ``image_embedding_scale``: the multimodal projector (zeros in transformers' init, which would
    make every image invisible) is drawn at random so that a soft image token's embedding has
    this multiple of the RMS of a (scaled) text token embedding after pretraining.
    """
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        GenerationConfig,
    )

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_gemma_tokenizer(vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA_SPECIAL_TOKENS}
    n_vocab = len(tokenizer)

    hidden, heads, head_dim = 64, 4, 16
    vision_hidden = 32
    config = Gemma3Config(
        text_config={
            "vocab_size": n_vocab,
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "max_position_embeddings": 4096,
            "sliding_window": 512,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            },
            "bos_token_id": ids["<bos>"],
            "eos_token_id": [ids["<eos>"], ids[END_OF_TURN]],
            "pad_token_id": ids["<pad>"],
            "tie_word_embeddings": True,
        },
        vision_config={
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "vision_use_head": False,
        },
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=ids[BOI_TOKEN],
        eoi_token_index=ids[EOI_TOKEN],
        image_token_index=ids[IMAGE_TOKEN],
        tie_word_embeddings=True,
    )
    patches_per_side = IMAGE_SIZE // PATCH_SIZE
    tokens_per_side = math.isqrt(MM_TOKENS_PER_IMAGE)
    if tokens_per_side**2 != MM_TOKENS_PER_IMAGE or patches_per_side % tokens_per_side:
        raise ValueError("mm_tokens_per_image must be a square whose side divides the patch grid")

    torch.manual_seed(seed)
    model: Any = Gemma3ForConditionalGeneration(config)
    model = model.to(torch.float32)
    pretrain_loss = (
        pretrain_gemma_text(
            model,
            tokenizer,
            pretrain_steps,
            seed,
            image_turns=image_turns,
            image_noise=image_noise,
            coordinate_share=coordinate_share,
        )
        if pretrain_steps
        else None
    )
    with torch.no_grad():
        embed = model.model.language_model.embed_tokens
        text_rms = float((embed.weight * embed.embed_scale).pow(2).mean().sqrt())
        # Projector input is RMS-normed (unit RMS), so weights of std s give an RMS of
        # s * sqrt(vision_hidden) per output; choose s to match text_rms * scale.
        std = image_embedding_scale * text_rms / math.sqrt(vision_hidden)
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, std)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids[END_OF_TURN], ids["<eos>"]],
        pad_token_id=ids["<pad>"],
        do_sample=False,
    )
    model.save_pretrained(out)

    image_processor = Gemma3ImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA_CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(out)
    (out / "tiny_vlm_info.json").write_text(
        json.dumps(
            {
                "family": "gemma3",
                "params": sum(p.numel() for p in model.parameters()),
                "vocab": n_vocab,
                "special_token_ids": ids,
                "mm_tokens_per_image": MM_TOKENS_PER_IMAGE,
                "seed": seed,
                "pretrain_steps": pretrain_steps,
                "pretrain_final_loss": pretrain_loss,
                "text_embedding_rms": text_rms,
            },
            indent=2,
        )
    )
    return out


def build_tiny_gemma3(out: Path, seed: int = 0) -> Path:
    """The tiny Gemma 3-style model with the settings that learnt the demo's answer format on the
    CPU (LLaMA-Factory ``template: gemma3``). Returns ``out``."""
    return build_gemma(out, seed=seed, image_turns=0.5, coordinate_share=0.2)
