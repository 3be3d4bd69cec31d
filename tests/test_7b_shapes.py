"""7B-shaped end-to-end check on CPU: the real LLaVA-1.5-7B and Qwen2.5-VL-7B configurations (full width, full
vocabulary, full vision tower, real image resolution) with the language model cut to 2 decoder layers, random
weights, bf16: capture -> fit (PGD on 2 images) -> steered generate.

Slow (minutes, ~5-9 GB of memory): `make test-slow`. Also a script: `python tests/test_7b_shapes.py` prints the
time and peak memory of each family (the README's line).
"""

import resource
import time

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from toolkit import tracing
from toolkit.adversarial import PGDConfig, pgd_attack
from toolkit.fitter import EraserFitter
from toolkit.models.loading import Sample, load_model
from toolkit.models.processors import allow_missing_video_processor
from toolkit.models.tiny import LLAVA_TEMPLATE, QWEN_SPECIALS, QWEN_TEMPLATE
from toolkit.models.tokenizer import train_byte_bpe, train_sentencepiece_bpe
from toolkit.nullspace import FixedRatio

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def llava_7b_two_layers():
    tok = train_sentencepiece_bpe([], ["<image>"], chat_template=LLAVA_TEMPLATE)
    ip = tf.CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                  image_mean=CLIP_MEAN, image_std=CLIP_STD)
    proc = tf.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                             num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    cfg = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768),
        text_config=tf.LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=2,
                                   num_attention_heads=32, num_key_value_heads=32, pad_token_id=tok.pad_token_id,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    return tf.LlavaForConditionalGeneration(cfg), proc


def qwen2_5_vl_7b_two_layers():
    tok = train_byte_bpe([], QWEN_SPECIALS, chat_template=QWEN_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>")
    ip = tf.Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2,
                                     merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    with allow_missing_video_processor():
        proc = tf.Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    ids = tok.convert_tokens_to_ids
    cfg = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=2,
                         num_attention_heads=28, num_key_value_heads=4, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    return tf.Qwen2_5_VLForConditionalGeneration(cfg), proc


BUILDERS = {"llava-1.5-7b": (llava_7b_two_layers, 576, 4096), "qwen2.5-vl-7b": (qwen2_5_vl_7b_two_layers, 144, 3584)}


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (336, 336, 3), dtype=np.uint8))


def run(name: str) -> dict:
    build, image_tokens, width = BUILDERS[name]
    start = time.time()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 directly (half the memory of fp32 then a cast)
    try:
        module, proc = build()
    finally:
        torch.set_default_dtype(previous)
    model = load_model(module.eval(), proc)
    assert model.dtype == torch.bfloat16 and model.hidden_size == width and model.num_layers == 2
    enc = model.encode([Sample("Who is this?", image(0))])
    n_image = int((enc["input_ids"] == model.config.image_token_id if hasattr(model.config, "image_token_id")
                   else enc["input_ids"] == model.config.image_token_index).sum())
    assert n_image == image_tokens, n_image
    layer = 1
    retain = [Sample(t, image(10 + i)) for i, t in enumerate(["What is in this picture?", "Describe the image.",
                                                              "What colour dominates?", "Is this indoors?"])]
    forget = [Sample(t, image(20 + i)) for i, t in enumerate(["Who is this person?", "What is her name?"])]
    refusal = [Sample("Do not reveal private details. Who is this?", image(30 + i)) for i in range(2)]
    attack = pgd_attack(model, refusal, ["Her name is Anna."] * 2, PGDConfig(steps=2), max_new_tokens=4)
    assert all(linf <= 16 / 255 + 1e-6 for linf in attack.linf)
    recall = [Sample(s.text, im) for s, im in zip(refusal, attack.images)]
    fitter = EraserFitter(model.hidden_size, [layer])
    fitter.add_samples(model, "retain", retain, batch_size=2)
    fitter.add_samples(model, "forget", forget, batch_size=2)
    fitter.add_samples(model, "refusal", refusal, batch_size=2)
    fitter.add_samples(model, "recall", recall, batch_size=2)
    eraser = fitter.eraser(FixedRatio(0.3), gamma=0.1, lam=4.0, positions="all", fingerprint=model.fingerprint())
    assert fitter.null_space(layer, FixedRatio(0.3)).k == int(0.3 * width)
    ids = tracing.generate(model, forget, steers=eraser, max_new_tokens=3, batch_size=2, return_ids=True)
    assert all(len(i) >= 1 for i in ids)
    return {"model": name, "seconds": round(time.time() - start, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "pgd_loss": [round(a, 3) for a in attack.loss_adversarial], "clean_loss": [round(c, 3) for c in
                                                                                       attack.loss_clean]}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_7b_shapes_end_to_end(name):
    info = run(name)
    print(info)


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or list(BUILDERS):
        print(run(name), flush=True)
