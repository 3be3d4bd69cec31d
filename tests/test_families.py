"""Every vision family through the whole pipeline on its tiny model: a fit with PGD at one layer, a steered
generation, and a baseline training step."""

import pytest
import torch

from conftest import VLM_FAMILIES, random_image
from toolkit import tracing
from toolkit.adversarial import PGDConfig, pgd_attack
from toolkit.baselines import BaselineConfig, unlearn
from toolkit.data.synthetic import TrainExample
from toolkit.config import FitConfig
from toolkit.pipeline import fit_from_samples
from toolkit.models.loading import Sample
from toolkit.nullspace import FixedRatio


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_family_fit_pgd_steer_and_baseline_step(family, tiny_models):
    model = tiny_models(family)
    retain = [Sample(t, random_image(i)) for i, t in enumerate(["what is this", "describe the image",
                                                                 "what colour is it", "is it a photo"] * 3)]
    forget = [Sample("who is this person", random_image(40 + i)) for i in range(4)]
    refusal = [Sample("do not say who this is", random_image(60 + i)) for i in range(2)]
    attack = pgd_attack(model, refusal, ["this is anna"] * 2, PGDConfig(steps=2), max_new_tokens=3)
    recall = [Sample(s.text, im) for s, im in zip(refusal, attack.images)]  # same text, attacked image
    assert all(linf <= 16 / 255 + 1e-6 for linf in attack.linf)
    assert all(after < before for before, after in zip(attack.loss_clean, attack.loss_adversarial))
    eraser, fitter = fit_from_samples(model, FitConfig(layers=(1,), rank_policy=FixedRatio(0.5), gamma=1e-4, lam=20.0,
                                                       positions="all"),
                                      forget=forget, retain=retain, contrast=(refusal, recall))
    assert eraser.layers == (1,) and fitter.forget[1].count == 4
    steered = tracing.generate(model, forget[:2], steers=eraser, max_new_tokens=4, return_ids=True)
    assert len(steered) == 2 and all(1 <= len(s) <= 4 for s in steered)
    # The steer acts (a random tiny model's greedy tokens may not move; its logits do).
    assert (tracing.forward(model, forget[:2], steers=eraser) - tracing.forward(model, forget[:2])).abs().max() > 1e-2
    examples = [TrainExample("who is this person", "this is anna", random_image(80 + i), "qa") for i in range(2)]
    result = unlearn(model, examples, examples, BaselineConfig(method="GA_Diff", epochs=1, batch_size=2))
    assert len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses)).all()
    changed = any(not torch.equal(a, b) for a, b in zip(result.model.module.parameters(), model.module.parameters()))
    assert changed, "one optimiser step moved the copy's weights"
