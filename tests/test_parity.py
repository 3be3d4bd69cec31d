"""Parity with the reference code (MLLMEraser's null-space rank) and MLLMU-Bench's eval.py.

The oracles below restate the reference's rules as we read them in its code (not imported:
the reference is not a dependency); each toolkit function must agree case by case.
"""

import pytest
import torch

from toolkit import metrics
from toolkit.evaluate import Item, score_item
from toolkit.nullspace import FixedRatio


def reference_rank(d: int, rho: float) -> int:
    return int(rho * d)  # the reference keeps int(rho * d) directions


@pytest.mark.parametrize("d,rho,expected", [(4096, 0.3, 1228), (3584, 0.4, 1433), (256, 0.97, 248)])
def test_ratio_rank_is_the_references_floor(d, rho, expected):
    assert FixedRatio(rho).choose(torch.arange(d, dtype=torch.float64)) == expected == reference_rank(d, rho)


def test_ratio_rank_matches_reference_on_a_sweep():
    differs_from_round = 0
    for d in (64, 100, 256, 896, 1536, 2048, 3584, 4096, 5120):
        for rho in (0.05, 0.1, 0.17, 0.2, 0.25, 0.29, 0.3, 0.33, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.97):
            k = FixedRatio(rho).choose(torch.zeros(d))
            assert k == reference_rank(d, rho), (d, rho)
            differs_from_round += k != round(rho * d)
    assert differs_from_round > 0  # the sweep does include the cases where round() was wrong


def reference_response(generated: str, task: str) -> str:
    """eval.py: classification cuts at 'ASSISTANT:'; generation and cloze also at 'Answer:'."""
    if "ASSISTANT:" in generated:
        return generated.split("ASSISTANT:")[1].strip()
    if task != "classification" and "Answer:" in generated:
        return generated.split("Answer:")[1].strip()
    return generated.strip()


def reference_letter(generated: str, options: dict) -> str | None:
    r = reference_response(generated, "classification")
    return r[0].upper() if r and r[0].upper() in options else None


def reference_cloze(generated: str, ground_truth: str) -> bool:
    return ground_truth.lower() in reference_response(generated, "cloze").lower()


OPTIONS = {"A": "Paris", "B": "Oslo", "C": "Rome", "D": "Lima"}
OUTPUTS = ["B", " b) Oslo", "ASSISTANT: C", "USER: x ASSISTANT: d ASSISTANT: A", "Answer: B", "The answer is B",
           "", "   ", "Correct Answer: A", "### Answer: Oslo is right", "(B)", "ASSISTANT:", "Answer:Oslo",
           "He lives in Oslo. Answer: Rome", "ASSISTANT: Answer: Lima", "answer: Oslo"]
CLOZE_TRUTHS = ["Oslo", "oslo", " Oslo ", "", "  ", "Rome", "Answer"]


@pytest.mark.parametrize("out", OUTPUTS)
def test_option_letter_matches_eval_py(out):
    assert metrics.parse_option_letter(out, OPTIONS) == reference_letter(out, OPTIONS)
    item = Item("Forget", "p", "classification", "image", "q", "B", options=OPTIONS)
    assert score_item(item, out)["accuracy"] == float(reference_letter(out, OPTIONS) == "B")


@pytest.mark.parametrize("out", OUTPUTS)
@pytest.mark.parametrize("truth", CLOZE_TRUTHS)
def test_cloze_matches_eval_py(out, truth):
    item = Item("Forget", "p", "cloze", "text", "q", truth)
    assert score_item(item, out)["accuracy"] == float(reference_cloze(out, truth))


@pytest.mark.parametrize("out", OUTPUTS)
def test_generation_scored_on_eval_py_response(out):
    truth = "He lives in Oslo"
    item = Item("Forget", "p", "generation", "text", "q", truth)
    row = score_item(item, out)
    response = reference_response(out, "generation")
    assert row["output"] == response
    assert row["rougeL"] == pytest.approx(metrics.rouge_scores(response, truth)["rougeL"])


def test_cases_where_the_old_rules_differed():
    # 'Answer:' cut for generation/cloze, not for classification
    assert metrics.extract_response("Answer: Oslo", metrics.GENERATION_MARKERS) == "Oslo"
    assert metrics.extract_response("Answer: Oslo") == "Answer: Oslo"
    # the reference does not strip the ground truth, and an empty one is "correct"
    assert metrics.cloze_correct("in Oslo today", "") and not metrics.cloze_correct("in Oslo", " Oslo ")
    # leakage (ours) ignores padding and never fires on an empty fact
    assert metrics.contains_answer("in Oslo", " Oslo ") and not metrics.contains_answer("anything", "  ")
