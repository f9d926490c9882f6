import numpy as np
import pytest

from mvalign.pareto import bootstrap_ci, default_reference_point, hypervolume, non_dominated


def test_non_dominated_hand_example():
    pts = [[1, 3], [2, 2], [3, 1], [1, 1], [2, 2], [0.5, 3]]
    # (1,1) is dominated by (2,2); (0.5,3) by (1,3); the duplicate (2,2) stays with its twin
    assert non_dominated(pts).tolist() == [True, True, True, False, True, False]
    pts3 = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0.4, 0.4, 0.4]]
    assert non_dominated(pts3).tolist() == [True, True, True, True, False]


def test_hypervolume_hand_examples():
    # staircase above (0,0): x∈[0,1]·3 + x∈[1,2]·2 + x∈[2,3]·1 = 6
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [0, 0]) == pytest.approx(6.0)
    # reference (0.5,0.5): 0.5·2.5 + 1·1.5 + 1·0.5 = 3.25; a point at the reference adds nothing
    assert hypervolume([[1, 3], [2, 2], [3, 1], [0.5, 0.5]], [0.5, 0.5]) == pytest.approx(3.25)
    # 3-D: two boxes [0,2]x[0,1]x[0,1] and [0,1]x[0,2]x[0,1] overlap in a unit cube: 2 + 2 - 1 = 3
    assert hypervolume([[2, 1, 1], [1, 2, 1]], [0, 0, 0]) == pytest.approx(3.0)
    assert hypervolume([[-1, -1]], [0, 0]) == 0.0


def test_reference_point_and_errors():
    ref = default_reference_point([[1, 3], [2, 2]], [[0.5, 4]])
    assert ref.tolist() == [0.5, 2]
    with pytest.raises(ValueError, match="NaN"):
        non_dominated([[1, float("nan")]])
    with pytest.raises(ValueError, match="reference point has"):
        hypervolume([[1, 2]], [0, 0, 0])


def test_bootstrap_interval():
    x = np.random.default_rng(0).normal(1.0, 1.0, size=400)
    lo, hi = bootstrap_ci(x, 2000, seed=1)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.2)
    assert bootstrap_ci(x, 2000, seed=1) == (lo, hi)
