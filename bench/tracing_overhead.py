"""Ratio of nnsight tracing time to plain forward hooks, capture + edit, on a ~20M-parameter tiny VLM.

    .venv/bin/python bench/tracing_overhead.py [--reps 15] [--batch 8]

Both sides do the same work per call: a forward pass over one batch that adds a
vector at every prompt position of layer 3 and reads the outputs of layers
2 and 5 at the last prompt token. Prints the median times and their ratio
(goal <= 1.05). Run on an otherwise idle machine: both sides share it.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def build(hidden: int = 512, layers: int = 6):
    import transformers as tf

    transformers_logging = tf.logging
    transformers_logging.set_verbosity_error()
    from toolkit.models import tiny

    _, proc = tiny.tiny_llava()
    cfg = tf.LlavaConfig(
        vision_config=tiny.clip_vision_config(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                              num_attention_heads=4),
        text_config=tf.LlamaConfig(**tiny.llama_text_config(proc.tokenizer, hidden_size=hidden,
                                                            intermediate_size=4 * hidden, num_hidden_layers=layers,
                                                            num_attention_heads=8, num_key_value_heads=8)),
        image_token_index=proc.tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    return tf.LlavaForConditionalGeneration(cfg).eval(), proc


if __name__ == "__main__":
    import numpy as np
    from PIL import Image

    from toolkit import tracing
    from toolkit.steering import edit_envoy
    from toolkit.models.loading import Sample, load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    module, proc = build()
    m = load_model(module, proc)
    n_params = sum(p.numel() for p in module.parameters())
    rs = np.random.RandomState(0)
    samples = [Sample(f"describe the person in this image number {i}",
                      Image.fromarray(rs.randint(0, 255, (32, 32, 3), dtype=np.uint8))) for i in range(args.batch)]
    vector = torch.randn(m.hidden_size) * 0.1
    steer = tracing.Steer(3, lambda h: vector.expand_as(h), "prompt")
    enc = m.encode(samples)

    def with_nnsight():
        import nnsight

        with torch.no_grad():
            with m.nn.trace(**enc):
                a = nnsight.save(m.layers[2].output[:, -1])
                edit_envoy(m.layers[3], [steer], prefill=True, mask=enc["attention_mask"])
                b = nnsight.save(m.layers[5].output[:, -1])
        return a, b

    def with_hooks():
        store = {}
        mask = enc["attention_mask"][:, :, None].float()

        def read(l):
            return lambda mod, i, o: store.__setitem__(l, o[:, -1].detach())

        hs = [m.layer_modules[2].register_forward_hook(read(2)),
              m.layer_modules[3].register_forward_hook(lambda mod, i, o: o + vector * mask),
              m.layer_modules[5].register_forward_hook(read(5))]
        try:
            with torch.no_grad():
                m.module(**enc)
        finally:
            for h in hs:
                h.remove()
        return store[2], store[5]

    a1, b1 = with_nnsight()
    a2, b2 = with_hooks()
    assert torch.allclose(a1, a2, atol=1e-5) and torch.allclose(b1, b2, atol=1e-5), "the two sides differ"
    times = {"nnsight": [], "hooks": []}
    for _ in range(3):
        with_nnsight(), with_hooks()
    for _ in range(args.reps):  # interleaved so both see the same machine load
        for name, fn in (("nnsight", with_nnsight), ("hooks", with_hooks)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: {n_params / 1e6:.1f}M parameters, batch {args.batch}, {enc['input_ids'].shape[1]} tokens, "
          f"{args.threads} threads, {args.reps} reps")
    print(f"median forward+capture+edit: nnsight {med['nnsight'] * 1e3:.1f} ms, hooks {med['hooks'] * 1e3:.1f} ms")
    print(f"ratio nnsight/hooks: {med['nnsight'] / med['hooks']:.3f} (goal <= 1.05)")
