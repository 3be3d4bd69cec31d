"""ASRU's second stage: the rule reward against the published table, the GRPO objective against its formula,
and GRPO raising the reward on a reduced setting."""

import pytest
import torch

from toolkit.baselines.grpo import (GRPOConfig, RewardPrompt, asru_reward, asru_rule_reward, group_advantages,
                                    grpo, grpo_loss, judged_reward, reward_prompts)
from toolkit.data.boundary import boundary_questions
from toolkit.metrics import rouge_scores
from toolkit.models.loading import Sample

GT = "This person was born in Lima."
KEY = "Lima"


@pytest.mark.parametrize("response, forget, expected", [
    # forget prompts: leak 0, refusal 1, partial (0 < ROUGE-L < 0.4) 0.5, else 0.1
    ("This person was born in Lima.", True, 0.0),
    ("Lima, I think.", True, 0.0),
    ("I cannot share personal information about this person.", True, 1.0),
    ("This person was born in", True, 0.1),  # no fact, ROUGE-L 0.83 >= 0.4: not partial
    ("The person in question is somebody.", True, 0.5),
    ("Bananas are yellow.", True, 0.1),  # ROUGE-L 0
    # boundary prompts: fact 1, refusal 0, ROUGE-L > 0.6 0.5, else 0.1
    ("This person was born in Lima.", False, 1.0),
    ("I cannot share personal information about this person.", False, 0.0),
    ("This person was born in Oslo.", False, 0.5),
    ("Bananas are yellow.", False, 0.1),
])
def test_rule_reward_table(response, forget, expected):
    if expected == 0.5 and forget:
        assert 0 < rouge_scores(response, GT)["rougeL"] < 0.4
    assert asru_rule_reward(response, GT, KEY, forget) == expected


def test_judged_reward_does_not_pay_loops_as_refusals():
    judged = judged_reward()
    loop = "I cannot I cannot I cannot I cannot I cannot I cannot"
    sentence = "I cannot share personal information about this person."
    assert asru_rule_reward(loop, GT, KEY, True) == 1.0  # the published rule: a refusal phrase is a refusal
    assert judged(loop, GT, KEY, True) < 1.0  # the judge labels it degenerate: a non-answer's reward
    assert judged(sentence, GT, KEY, True) == asru_rule_reward(sentence, GT, KEY, True) == 1.0
    # Everything but the refusal test is the published rule: leaks and boundary answers score alike.
    for response, forget in (("This person was born in Lima.", True), ("This person was born in Lima.", False),
                             (sentence, False), ("Bananas are yellow.", True)):
        assert judged(response, GT, KEY, forget) == asru_rule_reward(response, GT, KEY, forget)
    assert asru_reward("rule") is asru_rule_reward
    with pytest.raises(ValueError, match="refusal_test must be one of"):
        asru_reward("substring")


def test_group_advantages():
    r = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]])
    a = group_advantages(r)
    torch.testing.assert_close(a[0].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert a[0].std(unbiased=False) == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(a[1], torch.zeros(4))  # a group that agrees teaches nothing


def test_grpo_loss_is_the_formula_and_its_gradient():
    torch.manual_seed(0)
    n, t, beta, clip = 3, 5, 0.1, 0.2
    logp = torch.randn(n, t) - 2
    old = logp + 0.3 * torch.randn(n, t)
    ref = logp + 0.5 * torch.randn(n, t)
    mask = torch.ones(n, t)
    mask[0, 3:] = 0
    adv = torch.tensor([1.0, -0.5, 0.25])
    want = 0.0
    for i in range(n):
        total = 0.0
        for j in range(t):
            if not mask[i, j]:
                continue
            rho = torch.exp(logp[i, j] - old[i, j])
            sur = min(rho * adv[i], torch.clamp(rho, 1 - clip, 1 + clip) * adv[i])
            kl = torch.exp(ref[i, j] - logp[i, j]) - (ref[i, j] - logp[i, j]) - 1
            total += float(sur - beta * kl)
        want += total / float(mask[i].sum())
    got = grpo_loss(logp, old, ref, mask, adv, beta, clip)
    assert float(got) == pytest.approx(-want / n, rel=1e-5)
    # On-policy (old = logp): the gradient is -(A - beta (1 - pi_ref / pi)) per valid token, averaged.
    x = logp.clone().requires_grad_(True)
    grpo_loss(x, x.detach(), ref, mask, adv, beta, clip).backward()
    expected = -(adv[:, None] - beta * (1 - torch.exp(ref - logp))) * mask / mask.sum(1, keepdim=True) / n
    torch.testing.assert_close(x.grad, expected)


def test_boundary_questions_share_a_fact_with_the_forget_people():
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.synthetic import default_benchmark

    bench = MLLMUBench(default_benchmark())
    forget = bench.forget(10)
    pairs = boundary_questions(forget, bench.retain(10))
    facts = {q.answer_key for p in forget for q in p.generation}
    assert pairs and all(q.answer_key in facts for _, q in pairs)
    assert not {p.id for p, _ in pairs} & {p.id for p in forget}
    with pytest.raises(ValueError, match="include forget people"):
        boundary_questions(forget, forget)
    prompts = reward_prompts(forget[:1], pairs[:2])
    assert [p.forget for p in prompts] == [True] * len(forget[0].generation) + [False, False]


@pytest.mark.slow  # about 20 s on a 2-core AVX2 machine; the GRPO loss and gradient against the formula stay in make test
def test_grpo_raises_the_reward_on_a_reduced_setting():
    """ASRU's rule reward on two forget prompts: the mean rollout reward rises after a few steps."""
    from toolkit import tracing
    from toolkit.data.mllmu import MLLMUBench
    from toolkit.data.synthetic import default_benchmark
    from toolkit.models.loading import load_model

    model = load_model("default")
    # Never-seen faces: at temperature 1.5 the default refuses a few rollouts (2 of 16 here) and names
    # someone in the rest, so the group advantages carry a signal towards refusing.
    unknown = MLLMUBench(default_benchmark()).extra("Unknown_Set").iloc[:2]
    prompts = [RewardPrompt(Sample(r.Question, r.image["bytes"]), "", None, True) for r in unknown.itertuples()]

    def reward(text, gt, key, forget):  # a refusal is worth 1, anything else 0
        return 1.0 if "cannot" in text else 0.0

    def greedy_reward(m):
        outs = tracing.generate(m, [p.sample for p in prompts], max_new_tokens=12)
        return sum(reward(o, "", None, True) for o in outs) / len(outs)

    result = grpo(model, prompts, GRPOConfig(rollouts=8, steps=12, prompts_per_step=2, lr=3e-4, kl_coef=0.01,
                                             max_new_tokens=12, temperature=1.5))
    assert len(result.rewards) == 12
    assert sum(result.rewards[-4:]) > sum(result.rewards[:4])
    assert greedy_reward(result.model) >= greedy_reward(model)
    # Stage 2 starts from a trained baseline, which comes back frozen: GRPO must still train it.
    again = grpo(result.model, prompts, GRPOConfig(rollouts=2, steps=1, prompts_per_step=1, max_new_tokens=4))
    assert len(again.rewards) == 1


def test_grpo_with_lora_trains_adapters_only_and_returns_a_plain_model():
    import torch

    from toolkit.models.loading import load_model

    model = load_model("default")
    prompts = [RewardPrompt(Sample("Where was the person in the image born?", None), "x", None, True)]
    before = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    # A reward that differs between rollouts (a group that agrees has zero advantage and teaches nothing).
    res = grpo(model, prompts, GRPOConfig(rollouts=4, steps=2, prompts_per_step=1, lr=1e-2, max_new_tokens=6,
                                          lora_rank=4), reward=lambda text, *_: len(text) / 10)
    after = dict(res.model.module.named_parameters())
    assert set(after) == set(before)  # merged back: no adapter modules left
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)
    for n, p in model.module.named_parameters():  # the reference is untouched
        assert torch.equal(p, before[n])
    with pytest.raises(ValueError, match="are not module names"):
        grpo(model, prompts, GRPOConfig(rollouts=2, steps=1, lora_rank=2, lora_targets=("nope",)))


def _chats(prefix: str, n: int, start: int = 0):
    from toolkit.data.synthetic import TrainExample

    return [TrainExample(f"{prefix} person {i}?", f"Person {i} is {'a baker' if i % 2 else 'in Oslo'}.")
            for i in range(start, start + n)]


def _last_states(model, examples, layer):
    """Position -1 of each chat alone (no padding): the block's output at the answer's end."""
    hidden = []
    for e in examples:
        prompt = model.format_prompt(e.text, image=False)
        batch = model.adapter.training_batch(model.processor, [prompt], [e.answer], None)
        batch.pop("labels")
        grabbed = {}
        hook = model.adapter.layer_modules(model.module)[layer].register_forward_hook(
            lambda m, i, o: grabbed.__setitem__("h", (o[0] if isinstance(o, tuple) else o)[:, -1]))
        try:
            with torch.no_grad():
                model.module(**batch)
        finally:
            hook.remove()
        hidden.append(grabbed["h"].float())
    return torch.cat(hidden)


def test_redirection_trains_only_the_block_s_down_proj_and_moves_forget_chats_along_the_direction():
    """ASRU stage 1 as published: every parameter but the chosen block's ``mlp.down_proj.weight`` is bit-identical
    after training (and the model given is untouched); trained hard, forget chats' position -1 states move along
    the direction toward ``forget_scale x |direction|`` while retain chats' stay nearer where they were."""
    from toolkit.baselines import RedirectConfig, redirect
    from toolkit.baselines.redirect import asru_layer
    from toolkit.models.loading import load_model

    model = load_model("tiny-llava")
    layer = asru_layer(model.num_layers)
    forget, retain = _chats("Where was", 4), _chats("What is the job of", 8, 10)
    torch.manual_seed(0)
    direction = torch.randn(model.hidden_size)
    direction = 2.0 * direction / direction.norm()
    before = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    res = redirect(model, forget, retain, direction, RedirectConfig())  # the published defaults
    changed = [n for n, p in res.model.module.named_parameters() if not torch.equal(p, before[n])]
    assert changed == [n for n in before if n.endswith(f"layers.{layer}.mlp.down_proj.weight")], changed
    assert all(torch.equal(p, before[n]) for n, p in model.module.named_parameters())
    # 4 forget and 8 retain chats in batches of 2, 3 epochs: 4 retain steps and 2 forget steps an epoch.
    assert len(res.losses) == 3 * (4 + 2)
    hard = redirect(model, forget, retain, direction, RedirectConfig(lr=3e-2, epochs=40, forget_scale=1.0))
    unit = direction / direction.norm()
    f0, f1 = _last_states(model, forget, layer), _last_states(hard.model, forget, layer)
    r0, r1 = _last_states(model, retain, layer), _last_states(hard.model, retain, layer)
    moved = float(((f1 - f0) @ unit).mean())
    assert 0.5 * 2.0 < moved < 1.5 * 2.0, moved
    assert float((r1 - r0).norm(dim=1).mean()) < 0.5 * moved
    with pytest.raises(ValueError, match="not both"):
        RedirectConfig(scale=1.0, forget_scale=2.0)


def test_redirection_losses_are_the_reference_s_on_a_two_row_batch():
    """MSE over rows and dims, by hand: forget against ``frozen + forget_scale x direction``, retain against
    ``frozen`` times ``alpha``; and in the loop, with a zero learning rate the student is the frozen model, so
    every forget step costs ``forget_scale^2 x mean(direction^2)`` and every retain step 0."""
    from toolkit.baselines import RedirectConfig, redirect
    from toolkit.baselines.redirect import redirect_losses
    from toolkit.models.loading import load_model

    updated = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    frozen = torch.tensor([[0.5, 2.0, 1.0], [0.0, 0.0, 1.0]])
    d = torch.tensor([1.0, 0.0, -1.0])
    # forget, forget_scale 3: targets [[3.5, 2, -2], [3, 0, -2]]; squared errors 6.25+0+4 and 9+1+25.
    assert float(redirect_losses(updated, frozen, d, forget=True, forget_scale=3.0)) == pytest.approx(45.25 / 6)
    # retain, alpha 2: squared errors 0.25+0+1 and 0+1+4, times 2.
    assert float(redirect_losses(updated, frozen, d, forget=False, alpha=2.0)) == pytest.approx(2 * 6.25 / 6)
    model = load_model("tiny-llava")
    torch.manual_seed(1)
    direction = torch.randn(model.hidden_size)
    res = redirect(model, _chats("Where was", 2), _chats("What is the job of", 4, 10), direction,
                   RedirectConfig(lr=0.0, epochs=1))
    # One epoch: retain batches 2, forget batches 1 -> a forget step, then two retain steps.
    assert len(res.losses) == 3
    assert res.losses[0] == pytest.approx(9 * float(direction.pow(2).mean()), rel=1e-4)
    assert res.losses[1] == res.losses[2] == 0.0


def test_cli_passes_forget_scale_to_the_redirection(monkeypatch, tmp_path):
    """`mllmeraser baseline ASRU --forget-scale S` reaches stage 1's RedirectConfig."""
    import toolkit.baselines as baselines
    from experiments.cli import main

    class Seen(BaseException):  # past the CLI's one-line error handler
        pass

    def fake_asru(model, forget, retain, boundary, direction, config, **kw):
        raise Seen(config)

    monkeypatch.setattr(baselines, "asru", fake_asru)
    monkeypatch.setattr(baselines, "asru_direction",
                        lambda model, forget, **kw: (torch.zeros(model.hidden_size),
                                                     {"layer": 0, "kept": 1, "asked": 1}))
    with pytest.raises(Seen) as seen:
        main(["baseline", "ASRU", "--model", "tiny-llava", "--stages", "1", "--forget-scale", "3",
              "--out", str(tmp_path)])
    config = seen.value.args[0]
    assert (config.stages, config.redirect.forget_scale, config.redirect.scale) == (1, 3.0, None)


def test_never_seen_faces_are_the_untrained_unknown_people_in_400_questions():
    """The faces ASRU's direction reads: the benchmark's unknown people no default was trained on (its
    Unknown_Set), never a trained unknown face or a benchmark person; 20 x 4 portraits x 5 facts."""
    from toolkit.data.synthetic import FACTS, SyntheticConfig, make_people, never_seen_faces, training_examples

    cfg = SyntheticConfig()
    faces = never_seen_faces(cfg)
    unknown = [p for p in make_people(cfg) if p.group == "unknown"]
    trained, never = {p.id for p in unknown[: len(unknown) // 2]}, {p.id for p in unknown[len(unknown) // 2:]}
    assert len(faces) == len(never) * 4 * (1 + len(FACTS)) == 400
    assert {pid for _, _, pid in faces} == never and not trained & {pid for _, _, pid in faces}
    assert all(q.startswith(("What", "Who", "Can", "Tell", "Where", "In", "Which", "How")) or "image" in q
               for q, _, _ in faces[:10])
    # None of these portraits is a training image.
    seen = {ex.image.tobytes() for ex in training_examples(cfg) if ex.image is not None}
    assert not any(img.tobytes() in seen for _, img, _ in faces)


def test_the_unknown_side_is_asked_and_filtered_with_the_reference_s_strings():
    """The six questions, the suffix and the draw of guangjh/ASRU's collect_activations.py (random.seed(42), one
    random.choice per face), and its substring filter, loose as published ("no" is inside "know")."""
    import random

    from toolkit.baselines.asru import ASRU_QUESTIONS, ASRU_SUFFIX, says_unknown, unknown_face_prompts
    from toolkit.baselines.redirect import asru_layer

    assert ASRU_QUESTIONS == ("What is the phone number of the person in the image?",
                              "What is this person's date of birth?",
                              "What is the height of this person in the image?",
                              "Where does this person in the image currently reside?",
                              "What is the occupation of this person's father?",
                              "What does this person's father do as a job?")
    assert ASRU_SUFFIX == " if you do not know, describe the image."
    random.seed(42)
    drawn = [random.choice(ASRU_QUESTIONS) for _ in range(30)]
    prompts = unknown_face_prompts([f"face{i}" for i in range(30)])
    assert [p.text for p in prompts] == [q + " if you do not know, describe the image." for q in drawn]
    assert [p.image for p in prompts] == [f"face{i}" for i in range(30)]
    assert says_unknown("I do not know.") and says_unknown("SORRY.") and says_unknown("A man with a nose.")
    assert says_unknown("I know him: Anna Berg.")  # the published test keeps this too
    assert not says_unknown("Anna Berg, a baker.") and not says_unknown("")
    assert [asru_layer(n) for n in (8, 28, 32, 36)] == [3, 13, 15, 17]


def test_unknown_face_direction_is_the_mean_difference_of_the_kept_faces_and_the_forget_questions(monkeypatch):
    """The direction against a direct computation: the kept faces' prompts (published filter) or every face's
    (LUNAR) under the face model, minus the forget questions, at the last prompt token."""
    from toolkit import tracing
    from toolkit.baselines.asru import unknown_face_direction, unknown_face_prompts
    from toolkit.models.loading import load_model
    from conftest import random_image

    model = load_model("tiny-llava")
    faces = [random_image(i) for i in range(6)]
    forget = [Sample(f"Where was person {i} born?") for i in range(6, 10)]
    said = ["I do not recognize this person.", "Anna Berg.", "Sorry, I cannot tell.", "Bob.", "Cara.",
            "A woman in front of a wall; I know nothing more."]
    asked = []

    def generate(m, samples, **kw):
        asked.append((list(samples), kw.get("max_new_tokens")))
        return said[: len(samples)]

    monkeypatch.setattr(tracing, "generate", generate)
    layers = [1, model.num_layers - 1]
    direction, info = unknown_face_direction(model, faces, forget, layers)
    prompts = unknown_face_prompts(faces)
    assert [s.text for s in asked[0][0]] == [p.text for p in prompts] and asked[0][1] == 128
    assert info == {"asked": 6, "kept": 3, "kept_share": 0.5, "forget": 4, "filter": "published"}
    kept = [prompts[i] for i in (0, 2, 5)]
    for l in layers:
        expected = capture_last(model, kept, l).mean(0) - capture_last(model, forget, l).mean(0)
        torch.testing.assert_close(direction[l], expected, rtol=1e-5, atol=1e-5)
    lunar, info = unknown_face_direction(model, faces, forget, layers, filter="none")
    assert info["kept"] == 6 and len(asked) == 1  # no generation: LUNAR keeps every face
    expected = capture_last(model, prompts, 1).mean(0) - capture_last(model, forget, 1).mean(0)
    torch.testing.assert_close(lunar[1], expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(tracing, "generate", lambda m, samples, **kw: ["Anna Berg."] * len(samples))
    with pytest.raises(ValueError, match="kept nothing"):
        unknown_face_direction(model, faces, forget, layers)


def capture_last(model, samples, layer):
    """Last-token states one sample at a time (no padding): the direct computation."""
    from toolkit.tracing import capture

    return torch.cat([capture(model, [s], [layer], batch_size=1)[layer].float() for s in samples])
