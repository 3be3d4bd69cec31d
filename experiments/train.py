"""Training the embedded defaults (``mllmeraser train-vanilla [--family qwen2_5_vl]``).

A small ``LlavaForConditionalGeneration`` (CLIP vision tower, Llama text model
with 8 decoder layers, a word-level tokenizer trained here), or a small
``Qwen2_5_VLForConditionalGeneration`` (byte-level BPE, dynamic image grid),
learns the synthetic benchmark's people, the MCQ and cloze formats, and the
refusal behaviour.
Loss on answer tokens only; deterministic for a given seed and thread count.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers as tf
from tqdm.auto import tqdm

from toolkit.data import synthetic
from toolkit.data.prompts import cloze_prompt, generation_prompt, mcq_prompt
from toolkit.models.adapters import adapter_for
from toolkit.models.processors import allow_missing_video_processor, save_processor
from toolkit.models.tiny import LLAVA_TEMPLATE, QWEN_SPECIALS, QWEN_TEMPLATE, clip_image_processor
from toolkit.models.tokenizer import train_byte_bpe, train_word_tokenizer

__all__ = ["TrainConfig", "recipe", "build_processor", "build_default_architecture", "train_vanilla",
           "encode_training_batch", "recipe_examples", "training_compute", "training_loss", "native_bf16",
           "COMPUTE_DTYPES"]

COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """The default's recipe. ``family``: ``"llava"`` (the shipped ``default``: LLaVA-1.5's classes, a
    word-level tokenizer) or ``"qwen2_5_vl"`` (``default-qwen``: Qwen2.5-VL's classes, byte-level BPE,
    dynamic image grid of 4-pixel patches merged 2 x 2)."""

    family: str = "llava"
    seed: int = 0
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 60
    weight_decay: float = 0.01
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 8
    num_heads: int = 4
    vision_hidden: int = 64
    vision_layers: int = 2
    threads: int = 2
    num_fictitious: int = 100
    num_real: int = 30
    num_unknown: int = 40
    mcq_repeats_image: int = synthetic.MCQ_REPEATS_IMAGE
    mcq_repeats_text: int = 8
    # "face": privacy refusals for fictitious (private) people only, real (public) people answered, so the
    # image decides; "instruction": refused for everyone (synthetic.py).
    privacy_rule: str = "face"
    privacy_repeats: int = 2  # privacy-instructed questions per person, in multiples of the instructions
    public_privacy_repeats: int | None = 7  # the same for real people under the face rule (None: as above)
    image_question_variants: int = 1  # training portraits per trained image question and phrasing
    harmful_repeats: int = 6  # times each trained harmful request is trained on
    # "bfloat16": the forward and backward passes under bf16 autocast (matmuls, attention; weights, gradients
    # and AdamW stay float32) with the math attention kernel (the CPU flash kernel's bf16 backward is slower):
    # about 2x the float32 step on a CPU with AVX512-BF16 (bench/train_step.py).
    compute_dtype: str = "bfloat16"
    # True: the LM head projects only the positions that predict an answer token (the loss reads no other;
    # 6-10% of a batch's positions), so a step skips most of the head and its softmax: the same loss up to
    # rounding, 16% faster on Qwen's image batches (bench/train_step.py). False: the model's own ``.loss``
    # over every position, as the shipped LLaVA default was trained.
    answer_logits_only: bool = False

    def __post_init__(self) -> None:
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}.")


# Where each family's recipe departs from TrainConfig's defaults (LLaVA's recipe); see recipe().
RECIPE_CHANGES: dict[str, dict] = {
    "llava": {},
    # default-qwen: the same face rule and bf16; the letters, the new portraits and a held-out harmful request
    # needed more than LLaVA's mix (docs/results.md, the second default).
    "qwen2_5_vl": {"mcq_repeats_image": 13, "mcq_repeats_text": 11, "image_question_variants": 2,
                   "harmful_repeats": 12, "answer_logits_only": True, "steps": 1040},
}
FAMILIES = tuple(RECIPE_CHANGES)


def recipe(family: str = "llava", **overrides) -> TrainConfig:
    """The recipe that made the shipped default of ``family`` (``overrides`` change fields).

    ``llava`` (TrainConfig's defaults): the face rule, so the image decides a privacy refusal and PGD can
    break it; privacy questions twice per private person and 7 times per public one (fewer real people
    answer than fictitious ones refuse), one portrait per trained image question, text MCQs 8 times,
    1,000 steps under bf16 autocast (729 s on 2 CPU cores; docs/results.md, the embedded default).
    ``qwen2_5_vl``: the same face rule and bf16, with image MCQs 13 times and text MCQs 11 (with this
    byte-level tokenizer a one-letter answer is a small share of the answer tokens: at 12 / 11 and 1.94 passes
    MCQ reached 88.3%, goal 95), two portraits a trained image question (one gave 76.7-79.2% on Test_Set
    images, goal 80), each trained harmful request 12 times (6 left a held-out one answered), the LM head at
    answer positions only (a faster step, the same loss), 1,040 steps (854 s on 2 CPU cores)."""
    if family not in FAMILIES:
        raise ValueError(f"No default recipe for family {family!r}; choose one of {', '.join(FAMILIES)}.")
    return TrainConfig(family=family, **{**RECIPE_CHANGES[family], **overrides})


def _corpus(examples) -> list[str]:
    texts = [e.text + " " + e.answer for e in examples]
    return texts + [mcq_prompt("x", {"A": "a"}), cloze_prompt("x"), generation_prompt("x", True),
                    generation_prompt("x", False)]


def build_processor(examples, family: str = "llava"):
    """The processor, with a tokenizer trained on the examples' text (word-level for LLaVA, byte-level
    BPE for Qwen2.5-VL, as the real checkpoints' tokenizers are)."""
    if family == "llava":
        tok = train_word_tokenizer(_corpus(examples), ["<image>"], chat_template=LLAVA_TEMPLATE, lowercase=False)
        return tf.LlavaProcessor(image_processor=clip_image_processor(), tokenizer=tok, patch_size=8,
                                 vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                 chat_template=LLAVA_TEMPLATE)
    if family == "qwen2_5_vl":
        tok = train_byte_bpe(_corpus(examples), QWEN_SPECIALS, chat_template=QWEN_TEMPLATE, vocab_size=3000,
                             eos="<|im_end|>", pad="<|endoftext|>")
        # 32 x 32 portraits -> an 8 x 8 grid of 4-pixel patches -> 16 image tokens after the 2 x 2 merge;
        # other sizes get their own grid (up to 64 x 64 pixels), as Qwen's dynamic resolution does.
        ip = tf.Qwen2VLImageProcessorPil(min_pixels=16 * 16, max_pixels=64 * 64, patch_size=4,
                                         temporal_patch_size=2, merge_size=2)
        with allow_missing_video_processor():
            return tf.Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    raise ValueError(f"No default recipe for family {family!r}; choose one of {', '.join(FAMILIES)}.")


def build_default_architecture(processor, cfg: TrainConfig):
    tok = processor.tokenizer
    if cfg.family == "qwen2_5_vl":
        ids = tok.convert_tokens_to_ids
        head_dim = cfg.hidden_size // cfg.num_heads
        quarter = head_dim // 16  # mrope sections (t, h, w) split head_dim / 2 as 2:3:3, as Qwen2.5-VL-7B (16, 24, 24)
        config = tf.Qwen2_5_VLConfig(
            text_config=dict(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                             num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                             num_key_value_heads=cfg.num_heads, max_position_embeddings=512,
                             tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, bos_token_id=None,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                              "mrope_section": [2 * quarter, 3 * quarter, 3 * quarter]}),
            vision_config=dict(depth=cfg.vision_layers, hidden_size=cfg.vision_hidden,
                               intermediate_size=2 * cfg.vision_hidden, num_heads=4, out_hidden_size=cfg.hidden_size,
                               patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                               window_size=16, fullatt_block_indexes=[cfg.vision_layers - 1]),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        )
        return tf.Qwen2_5_VLForConditionalGeneration(config)
    vision = tf.CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=2 * cfg.vision_hidden,
                                 num_hidden_layers=cfg.vision_layers, num_attention_heads=4, image_size=32,
                                 patch_size=8, projection_dim=cfg.vision_hidden)
    text = tf.LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                          num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                          num_key_value_heads=cfg.num_heads, max_position_embeddings=256, pad_token_id=0,
                          bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    config = tf.LlavaConfig(vision_config=vision, text_config=text,
                            image_token_index=tok.convert_tokens_to_ids("<image>"),
                            vision_feature_select_strategy="default", vision_feature_layer=-1)
    return tf.LlavaForConditionalGeneration(config)


def encode_training_batch(processor, examples, adapter=None) -> dict[str, torch.Tensor]:
    """Right-padded prompt+answer ids with labels on the answer (and EOS) only.

    ``adapter`` (default: LLaVA's, the default model's family) builds the batch the
    family's way (:meth:`Adapter.training_batch`). ``examples`` share one layout:
    all with an image or all without.
    """
    from toolkit.models.adapters import LLAVA

    adapter = adapter or LLAVA
    with_image = {ex.image is not None for ex in examples}
    if len(with_image) != 1:
        raise ValueError("A training batch mixes examples with and without images; batch them apart.")
    has_image = with_image.pop()
    prompts = [adapter.format_prompt(processor, ex.text, with_image=has_image) for ex in examples]
    return adapter.training_batch(processor, prompts, [ex.answer for ex in examples],
                                  [ex.image for ex in examples] if has_image else None)


def native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX, as oneDNN reports). Without them
    bf16 is emulated: on an AVX2-only 2-core CPU a default's bf16 training step took 18.5x its float32 one
    (bench/train_step.py), so ``compute_dtype="bfloat16"`` is only the faster choice where this is True."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no native bf16 path either
        return False


@contextlib.contextmanager
def training_compute(compute_dtype: str = "float32"):
    """The forward and backward passes of a training step in ``compute_dtype``: ``"float32"`` as is;
    ``"bfloat16"``: CPU bf16 autocast with the math attention kernel (on 2 CPU cores the flash kernel's bf16
    backward is slower than its float32 one; bench/train_step.py)."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {compute_dtype!r}.")
    if compute_dtype == "float32":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), torch.autocast("cpu", dtype=torch.bfloat16):
        yield


def training_loss(model, batch: dict[str, torch.Tensor], answer_logits_only: bool = False) -> torch.Tensor:
    """Mean next-token NLL over the answer tokens of ``batch`` (:func:`encode_training_batch`; ``labels``
    -100 elsewhere). ``answer_logits_only=False``: the model's own ``.loss``. ``True``: the same mean, but
    the LM head (``model.lm_head`` on the base model ``model.model``'s last hidden state, both families'
    layout) is applied only at the positions whose next token is labelled."""
    if not answer_logits_only:
        return model(**batch).loss
    inputs = dict(batch)
    labels = inputs.pop("labels")
    hidden = model.model(**inputs).last_hidden_state
    targets = labels[:, 1:]
    labelled = targets != -100
    logits = model.lm_head(hidden[:, :-1][labelled])
    return torch.nn.functional.cross_entropy(logits.float(), targets[labelled])


def recipe_examples(cfg: TrainConfig) -> list[synthetic.TrainExample]:
    """The training examples ``cfg`` trains on (its synthetic benchmark's people, formats and repeats)."""
    syn = synthetic.SyntheticConfig(seed=cfg.seed, num_fictitious=cfg.num_fictitious, num_real=cfg.num_real,
                                    num_unknown=cfg.num_unknown, privacy_rule=cfg.privacy_rule,
                                    privacy_repeats=cfg.privacy_repeats,
                                    public_privacy_repeats=cfg.public_privacy_repeats,
                                    image_question_variants=cfg.image_question_variants,
                                    harmful_repeats=cfg.harmful_repeats)
    return synthetic.training_examples(syn, mcq_repeats_image=cfg.mcq_repeats_image,
                                       mcq_repeats_text=cfg.mcq_repeats_text)


def train_vanilla(out_dir: str | Path, cfg: TrainConfig = TrainConfig(), *, progress: bool = True) -> dict:
    """Train the default model and save it (safetensors, float16) with its processor."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.compute_dtype == "bfloat16" and not native_bf16():
        # The recipe stays as asked (float32 is another run, not the shipped default's), but say what it costs.
        warnings.warn("compute_dtype='bfloat16' on a CPU without native bf16 (no AVX512-BF16 or AMX): bf16 is "
                      "emulated and a training step runs many times slower than in float32 (18.5x on an "
                      "AVX2 CPU; bench/train_step.py). For speed pass compute_dtype='float32' "
                      "(--compute-dtype float32); that is a different run from the shipped default's.",
                      stacklevel=2)
    examples = recipe_examples(cfg)
    processor = build_processor(examples, cfg.family)
    model = build_default_architecture(processor, cfg).train()
    adapter = adapter_for(model.config)
    # Image and text-only examples are batched apart (a batch shares one layout).
    with_image = [e for e in examples if e.image is not None]
    text_only = [e for e in examples if e.image is None]
    rng = random.Random(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    share = len(with_image) / len(examples)
    pools = {True: with_image, False: text_only}
    orders = {k: [] for k in pools}
    start = time.time()
    losses = []
    bar = tqdm(range(cfg.steps), desc="train-vanilla", disable=not progress)
    for step in bar:
        kind = rng.random() < share
        if len(orders[kind]) < cfg.batch_size:
            idx = list(range(len(pools[kind])))
            rng.shuffle(idx)
            orders[kind].extend(idx)
        take, orders[kind] = orders[kind][: cfg.batch_size], orders[kind][cfg.batch_size:]
        batch = encode_training_batch(processor, [pools[kind][i] for i in take], adapter)
        with training_compute(cfg.compute_dtype):
            loss = training_loss(model, batch, cfg.answer_logits_only)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    seconds = time.time() - start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().to(torch.float16).save_pretrained(out, safe_serialization=True)
    save_processor(processor, out)
    info = {"train_config": asdict(cfg), "train_seconds": round(seconds, 1), "final_loss": sum(losses[-20:]) / 20,
            "examples": len(examples), "parameters": sum(p.numel() for p in model.parameters()),
            "torch": torch.__version__, "transformers": tf.__version__}
    (out / "training.json").write_text(json.dumps(info, indent=1))
    return info
