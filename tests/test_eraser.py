"""The closed-form factored map against dense and least-squares references; the Eraser artifact."""

import pytest
import torch

from conftest import random_image
from toolkit import tracing
from toolkit.eraser import Eraser, EraserLayer, MismatchError, solve_map
from toolkit.models.loading import Sample, load_model
from toolkit.nullspace import FixedRatio, SecondMoment, null_space


def synthetic_acts(d=24, n_r=400, n_f=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Retain activations live (mostly) in a 14-dim subspace; forget ones also use the rest.
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    retain = torch.randn(n_r, 14, generator=g, dtype=torch.float64) @ basis[:, :14].T
    retain += 1e-3 * torch.randn(n_r, d, generator=g, dtype=torch.float64)
    forget = torch.randn(n_f, d, generator=g, dtype=torch.float64) @ basis.T + 2.0 * basis[:, 20]
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    return retain, forget, direction


@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_factored_map_equals_dense_reference_and_lstsq(gamma):
    retain, forget, direction = synthetic_acts()
    space = null_space(SecondMoment(24).update(retain), FixedRatio(0.4))
    q = space.basis
    P = q @ q.T
    X = forget @ P
    ones = torch.ones(forget.shape[0], 1, dtype=torch.float64)
    # The reference's dense computation: P pinv(X^T X + gamma P^T P) X^T 1 d^T.
    dense = P @ torch.linalg.pinv(X.T @ X + gamma * P.T @ P) @ X.T @ ones @ direction[None]
    w = solve_map(forget.T @ forget, forget.sum(0), space, gamma)
    factored = w @ direction[None]
    torch.testing.assert_close(factored, dense, rtol=1e-9, atol=1e-10)  # float64
    assert torch.linalg.matrix_rank(dense, rtol=1e-8) == 1
    # Direct least squares in the null-space coordinates: min ||Z a - 1||^2 + gamma ||a||^2.
    Z = forget @ q
    A = torch.cat([Z, gamma ** 0.5 * torch.eye(q.shape[1], dtype=torch.float64)])
    b = torch.cat([ones, torch.zeros(q.shape[1], 1, dtype=torch.float64)])
    a = torch.linalg.lstsq(A, b).solution
    torch.testing.assert_close(w, q @ a, rtol=1e-9, atol=1e-10)
    # The gate is ~1 on forget rows (the fit's target) and ~0 on retain rows (null space).
    gate_f, gate_r = forget @ w[:, 0], retain @ w[:, 0]
    assert 0.5 < gate_f.mean() < 1.1
    assert gate_r.abs().max() < 0.02 * gate_f.abs().mean()


def test_per_sample_targets_are_low_rank():
    retain, forget, _ = synthetic_acts()
    space = null_space(SecondMoment(24).update(retain), FixedRatio(0.4))
    g = torch.Generator().manual_seed(3)
    U = torch.randn(forget.shape[0], 2, generator=g, dtype=torch.float64)  # targets T = U V, rank 2
    V = torch.randn(2, 24, generator=g, dtype=torch.float64)
    gates = solve_map(forget.T @ forget, None, space, 0.5, targets_cross=forget.T @ U)
    Z = forget @ space.basis
    dense = space.basis @ torch.linalg.solve(Z.T @ Z + 0.5 * torch.eye(Z.shape[1], dtype=torch.float64),
                                             Z.T @ (U @ V))
    torch.testing.assert_close(gates @ V, dense, rtol=1e-9, atol=1e-10)


def make_eraser(model, layers=(1,), lam=2.0, seed=0, positions="prompt"):
    g = torch.Generator().manual_seed(seed)
    maps = tuple(EraserLayer(l, torch.randn(model.hidden_size, 1, generator=g) * 0.3,
                             torch.randn(1, model.hidden_size, generator=g)) for l in layers)
    return Eraser(maps, lam, positions, model.fingerprint(), {"test": True})


@pytest.fixture(scope="module")
def llava():
    return load_model("tiny-llava")


def samples():
    return [Sample("what is this image", random_image(0)), Sample("who is it", random_image(1))]


def test_eraser_call_and_shapes(llava):
    e = make_eraser(llava)
    h = torch.randn(5, llava.hidden_size)
    m = e.layer_map(1)
    torch.testing.assert_close(e(1, h), h + 2.0 * (h @ m.gates) @ m.directions)
    assert e.layers == (1,) and e.rank == 1
    with pytest.raises(KeyError, match="steers layers"):
        e.layer_map(0)


def test_removing_the_eraser_is_bit_identical(llava):
    before = tracing.forward(llava, samples())
    gen_before = tracing.generate(llava, samples(), max_new_tokens=6, return_ids=True)
    e = make_eraser(llava, layers=(0, 2), lam=5.0)
    with tracing.steering(llava, e):
        steered = tracing.forward(llava, samples())
    after = tracing.forward(llava, samples())
    gen_after = tracing.generate(llava, samples(), max_new_tokens=6, return_ids=True)
    assert torch.equal(before, after)
    assert all(torch.equal(a, b) for a, b in zip(gen_before, gen_after))
    assert (steered - before).abs().max() > 1e-3


def test_save_load_roundtrip(llava, tmp_path):
    e = make_eraser(llava, layers=(0, 2))
    path = e.save(tmp_path / "e.safetensors")
    loaded = Eraser.load(path, llava)
    assert loaded.layers == e.layers and loaded.lam == e.lam and loaded.settings == e.settings
    for a, b in zip(e.maps, loaded.maps):
        assert torch.equal(a.gates, b.gates) and torch.equal(a.directions, b.directions)
    assert torch.equal(tracing.forward(llava, samples(), steers=e), tracing.forward(llava, samples(), steers=loaded))
    # Size: 2 d floats per layer plus metadata.
    assert path.stat().st_size < 2 * 2 * llava.hidden_size * 4 + 4096


def test_mismatched_model_refused(llava, tmp_path):
    path = make_eraser(llava).save(tmp_path / "e.safetensors")
    other = load_model("tiny-llava", seed=1)  # same architecture, other weights
    with pytest.raises(MismatchError, match="fitted on a different model.*weights_sha256"):
        Eraser.load(path, other)
    qwen = load_model("tiny-qwen2_vl")
    with pytest.raises(MismatchError, match="architecture"):
        tracing.forward(qwen, [Sample("hi")], steers=Eraser.load(path))


def test_truncated_file_refused(llava, tmp_path):
    path = make_eraser(llava).save(tmp_path / "e.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="Could not read eraser file .*truncated"):
        Eraser.load(tmp_path / "cut.safetensors")


def test_unknown_layer_refused(llava):
    e = Eraser((EraserLayer(7, torch.zeros(llava.hidden_size, 1), torch.zeros(1, llava.hidden_size)),),
               fingerprint=llava.fingerprint())
    with pytest.raises(ValueError, match="Layer 7 is out of range"):
        tracing.forward(llava, samples(), steers=e)


def test_composition_adds_gates(llava):
    e1, e2 = make_eraser(llava, (1,), 1.5, seed=1), make_eraser(llava, (1, 2), 0.5, seed=2)
    merged = Eraser.compose(e1, e2)
    h = torch.randn(4, llava.hidden_size)
    expected = h + e1.layer_map(1).shift(h, 1.5) + e2.layer_map(1).shift(h, 0.5)
    torch.testing.assert_close(merged(1, h), expected)
    assert merged.layer_map(1).gates.shape == (llava.hidden_size, 2)
    together = tracing.forward(llava, samples(), steers=[e1, e2])
    torch.testing.assert_close(tracing.forward(llava, samples(), steers=merged), together, rtol=1e-4, atol=1e-4)


def test_retain_penalty_equals_stacked_least_squares():
    retain, forget, _ = synthetic_acts()
    space = null_space(SecondMoment(24).update(retain), FixedRatio(0.6))
    a = 3.0
    w = solve_map(forget.T @ forget, forget.sum(0), space, 0.2, retain_gram=retain.T @ retain, retain_weight=a)
    q = space.basis
    # min ||H_f Q x - 1||^2 + a ||H_r Q x||^2 + 0.2 ||x||^2, solved directly.
    A = torch.cat([forget @ q, a ** 0.5 * retain @ q, 0.2 ** 0.5 * torch.eye(q.shape[1], dtype=torch.float64)])
    b = torch.cat([torch.ones(forget.shape[0], 1, dtype=torch.float64),
                   torch.zeros(retain.shape[0] + q.shape[1], 1, dtype=torch.float64)])
    torch.testing.assert_close(w, q @ torch.linalg.lstsq(A, b).solution, rtol=1e-9, atol=1e-10)
    plain = solve_map(forget.T @ forget, forget.sum(0), space, 0.2)
    assert (retain @ w).pow(2).mean() < (retain @ plain).pow(2).mean()
