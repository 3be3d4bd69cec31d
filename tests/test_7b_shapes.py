"""7B-shaped end-to-end check on CPU: the real LLaVA-1.5-7B and Qwen2.5-VL-7B configurations (full width, full
vocabulary, full vision tower, real image resolution) with the language model cut to 2 decoder layers, random
weights, bf16: capture -> fit (PGD on 2 images) -> steered generate.

Slow (minutes, ~5-9 GB of memory): `make test-slow`. Also a script: `python tests/test_7b_shapes.py` prints the
time and peak memory of each family (docs/results.md, 7B shapes).
"""

import resource
import time

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit import tracing
from toolkit.adversarial import PGDConfig, pgd_attack
from toolkit.config import FitConfig
from toolkit.fitter import EraserFitter
from toolkit.pipeline import add_samples
from toolkit.models.loading import Sample, load_model
from toolkit.models.shapes_7b import SHAPES, build
from toolkit.nullspace import FixedRatio

BUILDERS = SHAPES


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (336, 336, 3), dtype=np.uint8))


def run(name: str) -> dict:
    _, image_tokens, width, _ = SHAPES[name]
    start = time.time()
    module, proc = build(name)
    model = load_model(module, proc)
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
    add_samples(fitter, model, "retain", retain, batch_size=2)
    add_samples(fitter, model, "forget", forget, batch_size=2)
    add_samples(fitter, model, "refusal", refusal, batch_size=2)
    add_samples(fitter, model, "recall", recall, batch_size=2)
    eraser = fitter.eraser(FitConfig(rank_policy=FixedRatio(0.3), gamma=0.1, lam=4.0, positions="all"),
                           fingerprint=model.fingerprint())
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
