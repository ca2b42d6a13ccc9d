from __future__ import annotations

import numpy as np
import pytest

from pha_lightning.data.sampling import TemperatureBatchSampler, task_probabilities

SIZES = [800, 200, 50]


def _task_of(index: int, sizes: list[int]) -> int:
    return int(np.searchsorted(np.cumsum(sizes), index, side="right"))


def test_task_probabilities_follow_temperature() -> None:
    assert task_probabilities([100, 100], 3.0) == pytest.approx([0.5, 0.5])
    assert task_probabilities([300, 100], 1.0) == pytest.approx([0.75, 0.25])
    assert task_probabilities([400, 100], 2.0) == pytest.approx([2 / 3, 1 / 3])
    # Large T approaches uniform sampling.
    assert task_probabilities([10**6, 1], 1e6) == pytest.approx([0.5, 0.5], abs=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 10.0])
@pytest.mark.parametrize("mode", ["mixed", "task"])
def test_empirical_task_frequencies_match_temperature(temperature: float, mode: str) -> None:
    # Mixed mode: 200 000 slot draws, standard error < 0.0012. Task mode draws once per batch:
    # 40 000 batches, standard error < 0.0025. The 0.01 tolerance is > 4 sigma for both.
    batch_size, num_batches = (100, 2000) if mode == "mixed" else (5, 40000)
    sampler = TemperatureBatchSampler(
        SIZES, batch_size=batch_size, temperature=temperature, mode=mode, num_batches=num_batches
    )
    tasks = np.searchsorted(np.cumsum(SIZES), np.array(list(sampler)).ravel(), side="right")
    frequencies = np.bincount(tasks, minlength=len(SIZES)) / len(tasks)
    expected = np.array(SIZES, dtype=float) ** (1 / temperature)
    assert frequencies == pytest.approx(expected / expected.sum(), abs=0.01)


def test_indices_stay_inside_their_task_and_cover_small_shards_without_replacement() -> None:
    sampler = TemperatureBatchSampler([30, 5], batch_size=7, temperature=1.0, num_batches=40, seed=3)
    indices = [index for batch in sampler for index in batch]
    assert all(0 <= index < 35 for index in indices)
    small = [index for index in indices if index >= 30]
    # The small task cycles: every full pass over it holds each of its 5 examples exactly once.
    for start in range(0, len(small) - len(small) % 5, 5):
        assert sorted(small[start : start + 5]) == [30, 31, 32, 33, 34]


def test_default_length_covers_data_once_per_replica_group() -> None:
    assert len(TemperatureBatchSampler([10, 7], batch_size=4)) == 5
    assert len(TemperatureBatchSampler([10, 7], batch_size=4, num_replicas=2, rank=1)) == 3
    sampler = TemperatureBatchSampler([10, 7], batch_size=4, num_batches=9)
    assert len(sampler) == 9 == len(list(sampler))
    assert all(len(batch) == 4 for batch in sampler)


def test_two_ranks_are_disjoint_equal_length_and_share_the_task_sequence() -> None:
    sizes = [40, 24, 12]
    ranks = [
        TemperatureBatchSampler(sizes, batch_size=6, temperature=2.0, seed=5, num_replicas=2, rank=rank)
        for rank in range(2)
    ]
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0])
    seen = [{index for batch in rank_batches for index in batch} for rank_batches in batches]
    assert seen[0].isdisjoint(seen[1])
    task_sequences = [[[_task_of(i, sizes) for i in batch] for batch in rank_batches] for rank_batches in batches]
    assert task_sequences[0] == task_sequences[1]


def test_new_epoch_gives_new_order_and_same_epoch_repeats() -> None:
    sampler = TemperatureBatchSampler(SIZES, batch_size=8, seed=1)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_epoch_is_read_when_iteration_starts() -> None:
    sampler = TemperatureBatchSampler(SIZES, batch_size=8, seed=1)
    iterator = iter(sampler)  # Lightning creates the iterator before the epoch hook runs
    sampler.set_epoch(4)
    reference = TemperatureBatchSampler(SIZES, batch_size=8, seed=1)
    reference.set_epoch(4)
    assert list(iterator) == list(reference)


def test_different_seeds_give_different_orders() -> None:
    assert list(TemperatureBatchSampler(SIZES, batch_size=8, seed=1)) != list(
        TemperatureBatchSampler(SIZES, batch_size=8, seed=2)
    )


def test_task_mode_batches_hold_a_single_task() -> None:
    sampler = TemperatureBatchSampler(SIZES, batch_size=16, temperature=1.0, mode="task", num_batches=50)
    for batch in sampler:
        assert len({_task_of(index, SIZES) for index in batch}) == 1


def test_mixed_mode_batches_mix_tasks() -> None:
    sampler = TemperatureBatchSampler(SIZES, batch_size=16, temperature=10.0, num_batches=50)
    assert all(len({_task_of(index, SIZES) for index in batch}) > 1 for batch in sampler)


def test_state_dict_round_trip_resumes_exactly() -> None:
    sampler = TemperatureBatchSampler(SIZES, batch_size=8, seed=7, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    full = list(sampler)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(5)]
    state = sampler.state_dict()
    assert state == {"epoch": 3, "batches_yielded": 5}

    resumed = TemperatureBatchSampler(SIZES, batch_size=8, seed=7, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the epoch hook runs again on resume; it must not lose the position
    assert consumed + list(resumed) == full
    # The skip applies to one iteration only; the next epoch starts from its beginning.
    resumed.set_epoch(4)
    assert len(list(resumed)) == len(resumed)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"temperature": -1.0}, "temperature must be > 0, got -1.0"),
        ({"task_sizes": [5, 0]}, r"tasks \[1\] have no examples"),
        ({"task_sizes": []}, "task_sizes is empty"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"mode": "round_robin"}, r"unknown sampling mode 'round_robin'; valid modes: \['mixed', 'task'\]"),
        ({"rank": 2, "num_replicas": 2}, r"rank must be in \[0, 2\), got 2"),
        ({"rank": -1}, r"rank must be in \[0, 1\), got -1"),
        ({"num_replicas": 8}, r"fewer examples than num_replicas=8"),
        ({"num_batches": 0}, "num_batches must be >= 1 or None, got 0"),
    ],
)
def test_bad_arguments_are_rejected_with_the_value(kwargs: dict, message: str) -> None:
    arguments = {"task_sizes": [5, 7], "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        TemperatureBatchSampler(**arguments)
