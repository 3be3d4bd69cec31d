"""Tiny random-initialised models of every supported family, built offline.

Each builder returns ``(torch_model, processor)`` of the *same architecture
classes* as the real checkpoint (LlavaForConditionalGeneration, Qwen2VL..., a
processor of the family's own class), but with a few hundred thousand
parameters, a tokenizer of the family's kind trained here (byte-level BPE for
Qwen2/2.5/3-VL, Qwen2 and Llama-3-style Llama; SentencePiece-style BPE with byte
fallback and ``▁`` for LLaVA-1.5/NeXT, Gemma3, PaliGemma and Idefics3), and image processors given
explicit parameters (the PIL back-ends: torchvision is not available beside the
CPU torch). Tests and examples use them; nothing is downloaded.

Image sizes are 32x32 throughout, so a test image is cheap to make.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as tf

from .processors import allow_missing_video_processor
from .tokenizer import train_byte_bpe, train_sentencepiece_bpe

IMAGE_SIZE = 32

# Chat templates: structurally like the families' own (role markers, where the
# image placeholder goes, the generation prompt), without system prompts.
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }} {% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }} {% endif %}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

LLAMA3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}"
    "{% endif %}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% endif %}"
)

QWEN_SPECIALS = [
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<|endoftext|>",
]


def _special_ids(tok) -> dict:
    """pad/bos/eos ids for a text config, read from the tokenizer (they differ between kinds)."""
    return dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def _sp_tokenizer(specials=(), template=None, **kw):
    """LLaVA-1.5 / Llama-2 kind: SentencePiece-style BPE, ``▁`` pieces, byte fallback, ``<s>`` prepended."""
    return train_sentencepiece_bpe([], specials, chat_template=template, **kw)


def llama_text_config(tok, **kw) -> dict:
    base = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, **_special_ids(tok),
    )
    base.update(kw)
    return base


def clip_vision_config(**kw) -> tf.CLIPVisionConfig:
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=IMAGE_SIZE, patch_size=8, projection_dim=32)
    base.update(kw)
    return tf.CLIPVisionConfig(**base)


def _siglip_vision(**kw) -> tf.SiglipVisionConfig:
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=IMAGE_SIZE, patch_size=8)
    base.update(kw)
    return tf.SiglipVisionConfig(**base)


def clip_image_processor(cls=None):
    cls = cls or tf.CLIPImageProcessorPil
    return cls(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True, do_resize=True, do_rescale=True, do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def tiny_llava(seed: int = 0, num_layers: int = 3, hidden_size: int = 64, corpus=()):
    _seed(seed)
    tok = train_sentencepiece_bpe(list(corpus), ["<image>"], chat_template=LLAVA_TEMPLATE)
    proc = tf.LlavaProcessor(
        image_processor=clip_image_processor(), tokenizer=tok, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    cfg = tf.LlavaConfig(
        vision_config=clip_vision_config(),
        text_config=tf.LlamaConfig(**llama_text_config(tok, num_hidden_layers=num_layers, hidden_size=hidden_size,
                                                 intermediate_size=2 * hidden_size)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-2, projector_hidden_act="gelu",
    )
    return tf.LlavaForConditionalGeneration(cfg).eval(), proc


def tiny_llava_next(seed: int = 0):
    _seed(seed)
    tok = _sp_tokenizer(["<image>"], LLAVA_TEMPLATE)
    # LLaVA-NeXT's any-res grid in miniature (the released one is 336 x {1,2,3} tiles): an image is
    # padded to one of these, cut into 32 x 32 tiles and seen after one whole-image view.
    grid = [[IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE], [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]
    ip = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=grid, do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    proc = tf.LlavaNextProcessor(
        image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE,
    )
    cfg = tf.LlavaNextConfig(
        vision_config=clip_vision_config(), text_config=tf.LlamaConfig(**llama_text_config(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=grid,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    return tf.LlavaNextForConditionalGeneration(cfg).eval(), proc


def _qwen_tokenizer():
    """Qwen2 kind: byte-level BPE, ``<|im_end|>`` ends a turn, ``<|endoftext|>`` pads, no BOS."""
    return train_byte_bpe([], QWEN_SPECIALS, chat_template=QWEN_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>")


def _qwen_image_processor():
    # 32x32 image, patch 8, merge 2 -> a 4x4 patch grid -> 4 image tokens.
    return tf.Qwen2VLImageProcessorPil(
        min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE,
        patch_size=8, temporal_patch_size=2, merge_size=2,
    )


def _qwen_processor(cls) -> tuple:
    """``(tokenizer, processor)`` of a Qwen-VL family, built without a video processor."""
    tok = _qwen_tokenizer()
    with allow_missing_video_processor():
        return tok, cls(image_processor=_qwen_image_processor(), tokenizer=tok, chat_template=QWEN_TEMPLATE)


def _qwen_ids(tok) -> dict:
    ids = tok.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen_text(tok, **kw) -> dict:
    base = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, **_special_ids(tok),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    base.update(kw)
    return base


def tiny_qwen2_vl(seed: int = 0):
    _seed(seed)
    tok, proc = _qwen_processor(tf.Qwen2VLProcessor)
    cfg = tf.Qwen2VLConfig(
        text_config=_qwen_text(tok),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        **_qwen_ids(tok),
    )
    return tf.Qwen2VLForConditionalGeneration(cfg).eval(), proc


def tiny_qwen2_5_vl(seed: int = 0):
    _seed(seed)
    tok, proc = _qwen_processor(tf.Qwen2_5_VLProcessor)
    cfg = tf.Qwen2_5_VLConfig(
        text_config=_qwen_text(tok),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           window_size=16, fullatt_block_indexes=[1]),
        **_qwen_ids(tok),
    )
    return tf.Qwen2_5_VLForConditionalGeneration(cfg).eval(), proc


def tiny_qwen3_vl(seed: int = 0):
    _seed(seed)
    tok, proc = _qwen_processor(tf.Qwen3VLProcessor)
    text = _qwen_text(tok, head_dim=16)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                               "mrope_interleaved": True}
    cfg = tf.Qwen3VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           num_position_embeddings=16, deepstack_visual_indexes=[0]),
        **_qwen_ids(tok),
    )
    return tf.Qwen3VLForConditionalGeneration(cfg).eval(), proc


def tiny_gemma3(seed: int = 0):
    _seed(seed)
    specials = ["<start_of_image>", "<image_soft_token>", "<end_of_image>", "<start_of_turn>", "<end_of_turn>"]
    # Gemma: SentencePiece kind without the dummy prefix; the template writes <bos> itself.
    tok = _sp_tokenizer(specials, GEMMA3_TEMPLATE, add_prefix_space=False, add_bos=False)
    tok.boi_token, tok.image_token, tok.eoi_token = specials[:3]
    tok.boi_token_id, tok.image_token_id, tok.eoi_token_id = tok.convert_tokens_to_ids(specials[:3])
    ip = tf.Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_pan_and_scan=False,
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = tf.Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=GEMMA3_TEMPLATE, image_seq_length=4)
    ids = tok.convert_tokens_to_ids
    cfg = tf.Gemma3Config(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         sliding_window=64, **_special_ids(tok)),
        vision_config=_siglip_vision().to_dict(), mm_tokens_per_image=4,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    model = tf.Gemma3ForConditionalGeneration(cfg).eval()
    # transformers initialises Gemma3's image projection to zeros (a real checkpoint overwrites it):
    # left so, the tiny model would ignore every image. Give it random weights like the rest.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    return model, proc


def tiny_paligemma(seed: int = 0):
    _seed(seed)
    # The processor writes <image>... <bos> prompt "\n" itself.
    tok = _sp_tokenizer(["<image>"], add_prefix_space=False, add_bos=False)
    tok.image_token, tok.image_token_id = "<image>", tok.convert_tokens_to_ids("<image>")
    ip = tf.SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ip.image_seq_length = (IMAGE_SIZE // 8) ** 2
    proc = tf.PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    cfg = tf.PaliGemmaConfig(
        vision_config=_siglip_vision().to_dict(),
        text_config=dict(model_type="gemma", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         **_special_ids(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=64,
    )
    cfg.text_config.vocab_size = len(tok)
    return tf.PaliGemmaForConditionalGeneration(cfg).eval(), proc


def tiny_idefics3(seed: int = 0):
    _seed(seed)
    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<|im_start|>"]
    specials += [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = _sp_tokenizer(specials, IDEFICS3_TEMPLATE, add_bos=False)
    ip = tf.Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 2 * IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    # Idefics3's splitting in miniature (released: longest edge 4 x 364, tiles of 364): the image is
    # resized to multiples of 32 up to 64, cut into 32 x 32 tiles plus one whole-image tile.
    # Each tile: 32/8 = 4x4 patches, pixel-shuffle scale 2 -> 4 image tokens.
    proc = tf.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE)
    cfg = tf.Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=8),
        text_config=llama_text_config(tok), scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
    )
    return tf.Idefics3ForConditionalGeneration(cfg).eval(), proc


def tiny_llama(seed: int = 0):
    _seed(seed)
    # Llama-3 kind: byte-level BPE, <|begin_of_text|> prepended by the template, and no pad token
    # (as the real checkpoints ship; LoadedModel supplies one).
    tok = train_byte_bpe([], ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"], chat_template=LLAMA3_TEMPLATE,
                         eos="<|eot_id|>", bos="<|begin_of_text|>")
    tok.pad_token = None
    config = tf.LlamaConfig(**llama_text_config(tok))
    return tf.LlamaForCausalLM(config).eval(), tok


def tiny_qwen2(seed: int = 0):
    _seed(seed)
    tok = _qwen_tokenizer()
    cfg = tf.Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, **_special_ids(tok))
    return tf.Qwen2ForCausalLM(cfg).eval(), tok


TINY_BUILDERS: dict[str, Callable] = {
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "qwen2_vl": tiny_qwen2_vl,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "qwen3_vl": tiny_qwen3_vl,
    "gemma3": tiny_gemma3,
    "paligemma": tiny_paligemma,
    "idefics3": tiny_idefics3,
    "llama": tiny_llama,
    "qwen2": tiny_qwen2,
}


def build_tiny(family: str, seed: int = 0):
    """``(model, processor_or_tokenizer)`` for a tiny random model of ``family``."""
    if family not in TINY_BUILDERS:
        raise ValueError(f"No tiny builder for family {family!r}; known: {', '.join(TINY_BUILDERS)}")
    return TINY_BUILDERS[family](seed=seed)
