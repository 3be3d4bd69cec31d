"""Models of the real checkpoints' shapes with random weights, built offline: LLaVA-1.5-7B and Qwen2.5-VL-7B
configurations (full width, full vocabulary, full vision tower, real image resolution) with the language
model cut to a few decoder layers.

They measure what the toolkit costs at the widths users run (``bench/real_shapes.py``,
``bench/scaling.py``) and check it end to end (``tests/test_7b_shapes.py``) without a checkpoint.
``width`` rescales LLaVA's language model (heads of 128 dimensions, the MLP ratio of LLaVA-1.5-7B) for
scaling curves at a fixed depth. Build inside ``torch.set_default_dtype(torch.bfloat16)`` to initialise in
bf16 directly (:func:`build`).
"""

from __future__ import annotations

import contextlib

import torch
import transformers as tf

from .processors import allow_missing_video_processor
from .tiny import LLAVA_TEMPLATE, QWEN_SPECIALS, QWEN_TEMPLATE
from .tokenizer import train_byte_bpe, train_sentencepiece_bpe

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGE_SIZE", "SHAPES", "llava_1_5_7b", "qwen2_5_vl_7b", "build"]

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGE_SIZE = 336  # LLaVA-1.5's resolution: 576 image tokens; Qwen2.5-VL at 336 x 336: 144


def llava_1_5_7b(num_layers: int = 2, width: int = 4096):
    """``(LlavaForConditionalGeneration, LlavaProcessor)`` of LLaVA-1.5-7B's shape (32 layers, d = 4096 there)."""
    if width % 128:
        raise ValueError(f"width must be a multiple of 128 (heads of 128 dimensions), got {width}.")
    tok = train_sentencepiece_bpe([], ["<image>"], chat_template=LLAVA_TEMPLATE)
    ip = tf.CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                  crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                  image_mean=CLIP_MEAN, image_std=CLIP_STD)
    proc = tf.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                             num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    cfg = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, image_size=IMAGE_SIZE, patch_size=14,
                                          projection_dim=768),
        text_config=tf.LlamaConfig(vocab_size=32064, hidden_size=width, intermediate_size=width * 11008 // 4096,
                                   num_hidden_layers=num_layers, num_attention_heads=width // 128,
                                   num_key_value_heads=width // 128, pad_token_id=tok.pad_token_id,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    return tf.LlavaForConditionalGeneration(cfg), proc


def qwen2_5_vl_7b(num_layers: int = 2):
    """``(Qwen2_5_VLForConditionalGeneration, processor)`` of Qwen2.5-VL-7B's shape (28 layers, d = 3584 there)."""
    tok = train_byte_bpe([], QWEN_SPECIALS, chat_template=QWEN_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>")
    ip = tf.Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2,
                                     merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    with allow_missing_video_processor():
        proc = tf.Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    ids = tok.convert_tokens_to_ids
    cfg = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=num_layers,
                         num_attention_heads=28, num_key_value_heads=4, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    return tf.Qwen2_5_VLForConditionalGeneration(cfg), proc


# name -> (builder, image tokens at 336 px, width, decoder layers of the real checkpoint)
SHAPES = {"llava-1.5-7b": (llava_1_5_7b, 576, 4096, 32), "qwen2.5-vl-7b": (qwen2_5_vl_7b, 144, 3584, 28)}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(name: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0, **kw):
    """Build ``SHAPES[name]`` initialised directly in ``dtype`` (bf16: half the memory of float32 then a cast)."""
    if name not in SHAPES:
        raise ValueError(f"Unknown shape {name!r}: one of {', '.join(SHAPES)}.")
    torch.manual_seed(seed)
    with _default_dtype(dtype):
        module, proc = SHAPES[name][0](**kw)
    return module.eval(), proc
