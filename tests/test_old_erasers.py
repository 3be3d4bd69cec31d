"""Eraser files written before the layout of 2026-12-07 (commit 7f350af, `mllmeraser fit` on the embedded default)
load with today's code and steer as they did: the next-token logits on 24 questions equal the ones the old code
recorded with the same file (float tolerance: thread counts reorder the sums; greedy ids matched on 2 threads)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toolkit import Eraser, Sample, load_model, tracing
from toolkit.data.items import items_from_profiles
from toolkit.data.mllmu import MLLMUBench
from toolkit.data.synthetic import default_benchmark

FILES = Path(__file__).resolve().parent / "data" / "erasers_7f350af"
EXPECTED = load_file(FILES / "expected_logits.safetensors")


@pytest.fixture(scope="module")
def asked():
    bench = MLLMUBench(default_benchmark())
    items = items_from_profiles(bench.forget(10)[:4], "forget", ("generation",))[:16] + \
        items_from_profiles(bench.retain(10)[:2], "retain", ("generation",))[:8]
    return load_model("default"), [Sample(it.prompt, it.image) for it in items]


# linear_answer_rows: `fit --layers 5 --pgd-steps 4 --pgd-limit 2 --n-contrast 16 --retain-budget 200
# --answer-weight 0.3 --retain-weight 40`; logistic_image_max_latched: `fit --layers 4,5 --gate logistic
# --gate-reads image-max --latch --pgd-steps 0 --n-contrast 16 --retain-budget 200` (the old CLI, batch 16).
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_old_eraser_file_steers_as_it_did(name, asked):
    model, samples = asked
    eraser = Eraser.load(FILES / f"{name}.safetensors", model)
    steered = tracing.forward(model, samples, steers=eraser).float()
    plain = tracing.forward(model, samples).float()
    assert (steered - plain).abs().max() > 1.0  # the eraser acts on these questions
    torch.testing.assert_close(steered, EXPECTED[name], atol=1e-4, rtol=1e-4)
