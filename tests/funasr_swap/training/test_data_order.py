"""The order of training batches: positions, epochs and each process's stream."""

from __future__ import annotations

from funasr_swap.training import BatchPlan


def test_batch_plan_positions_and_rank_streams_agree():
    plan = BatchPlan([1.0, 2.0, 3.0, 1.5, 2.5, 0.5, 0.7], batch_size=2, seed=3)
    n = len(plan.epoch(0))
    assert n == 4 and plan.epoch(0) != plan.epoch(1)  # new order each epoch
    flat = plan.epoch(0) + plan.epoch(1) + plan.epoch(2)
    stream = plan.stream((0, 0))
    assert [next(stream) for _ in range(3 * n)] == flat
    assert plan.advance((0, 1), 5) == (1, 2)
    rank0, rank1 = plan.stream((0, 3), 0, 2), plan.stream((0, 3), 1, 2)
    assert [next(rank0) for _ in range(3)] == flat[3:9:2]
    assert [next(rank1) for _ in range(3)] == flat[4:10:2]
