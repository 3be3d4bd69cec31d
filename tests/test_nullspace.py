import pytest
import torch

from toolkit.nullspace import (EnergyBudget, FixedRatio, RelativeTolerance, SecondMoment, null_space,
                               parse_rank_policy)


def low_rank_rows(n=500, d=32, rank=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))[0]
    return torch.randn(n, rank, generator=g, dtype=torch.float64) @ basis.T * 3.0, basis


def test_streaming_equals_batch():
    rows, _ = low_rank_rows()
    m = SecondMoment(32)
    for chunk in rows.split(37):
        m.update(chunk)
    torch.testing.assert_close(m.gram, rows.T @ rows)
    torch.testing.assert_close(m.total, rows.sum(0))
    assert m.count == 500


def test_known_rank_gives_that_null_space():
    rows, basis = low_rank_rows(rank=10)
    m = SecondMoment(32).update(rows)
    space = null_space(m, RelativeTolerance(1e-8))
    assert space.k == 32 - 10
    # The null space is orthogonal to the data's span, and retain rows project to ~0.
    assert (basis.T @ space.basis).abs().max() < 1e-8
    assert space.project(rows).abs().max() < 1e-8
    assert space.leaked_energy < 1e-12
    assert null_space(m, EnergyBudget(1e-6)).k == 22


def test_leaked_energy_matches_direct_projection():
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(300, 16, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 16, dtype=torch.float64)
    m = SecondMoment(16).update(rows)
    for policy in (FixedRatio(0.3), EnergyBudget(0.05), RelativeTolerance(0.05)):
        space = null_space(m, policy)
        direct = float(space.project(rows).pow(2).sum() / rows.pow(2).sum())
        assert abs(space.leaked_energy - direct) < 1e-10
    assert null_space(m, FixedRatio(0.3)).k == 4  # int(0.3 * 16) = int(4.8): the reference's floor
    kept = null_space(m, EnergyBudget(0.05))
    assert kept.leaked_energy <= 0.05 < float(kept.eigenvalues[: kept.k + 1].sum() / kept.eigenvalues.sum())


def test_k_zero_is_refused():
    rows = torch.randn(200, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="leaves k = 0"):
        null_space(SecondMoment(8).update(rows), EnergyBudget(1e-9))


def test_nan_and_shape_refused():
    m = SecondMoment(4)
    with pytest.raises(FloatingPointError, match="NaN"):
        m.update(torch.tensor([[1.0, float("nan"), 0, 0]]))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        m.update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="retain set is empty"):
        null_space(SecondMoment(4), FixedRatio(0.5))


def test_parse_rank_policy():
    assert parse_rank_policy("ratio:0.4") == FixedRatio(0.4)
    assert parse_rank_policy("energy:0.01") == EnergyBudget(0.01)
    with pytest.raises(ValueError, match="Unknown rank policy"):
        parse_rank_policy("svd:3")


def test_weighted_rows_count_as_repeats():
    rows, _ = low_rank_rows(n=40)
    weighted = SecondMoment(32).update(rows[:10]).update(rows[10:], weight=3.0)
    repeated = SecondMoment(32).update(rows[:10])
    for _ in range(3):
        repeated.update(rows[10:])
    torch.testing.assert_close(weighted.gram, repeated.gram)
    torch.testing.assert_close(weighted.total, repeated.total)
    assert weighted.count == repeated.count == 100
    with pytest.raises(ValueError, match="weights must be >= 0"):
        SecondMoment(32).update(rows, weight=-1.0)
