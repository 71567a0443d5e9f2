"""How many entries a worker process asks for (streamq.worker.batching): the sizing
rule on its own; tests/test_reliability.py counts what it does with real processes."""

from __future__ import annotations

import pytest

from streamq.worker.batching import WINDOW_S, BatchSize


def test_the_first_read_takes_one_entry_then_fast_tasks_take_the_limit() -> None:
    b = BatchSize(100)
    assert b.count() == 1
    b.observe(40e-6)  # a noop
    assert b.count() == 100


def test_slow_tasks_are_read_one_at_a_time_even_with_a_quick_one_between() -> None:
    b = BatchSize(100)
    b.observe(0.3)
    assert b.count() == 1
    b.observe(40e-6)  # a quick task between slow ones does not open the batch
    assert b.count() == 1
    b.observe(0.3)
    assert b.count() == 1


def test_fast_batches_earn_the_batch_back_gradually() -> None:
    b = BatchSize(100)
    b.observe(0.5)
    counts = []
    for _ in range(40):
        b.observe(40e-6)
        counts.append(b.count())
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 100
    assert counts.index(100) < 30


def test_a_preempted_task_in_a_full_batch_keeps_the_batch() -> None:
    """The average of a batch of 100 noops, one of them 5 ms late (the scheduler)."""
    b = BatchSize(100)
    b.observe(40e-6)
    b.observe((99 * 40e-6 + 5e-3) / 100)
    assert b.count() == 100


@pytest.mark.parametrize("per_task_s, expected", [(0.01, 5), (0.001, 50), (WINDOW_S * 2, 1)])
def test_a_batch_holds_about_the_window_of_work(per_task_s: float, expected: int) -> None:
    b = BatchSize(100)
    b.observe(per_task_s)
    assert b.count() == expected


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        BatchSize(0)
