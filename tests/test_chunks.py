"""handgrad.chunks: where each step of an epoch lies among its chunks, and resuming an epoch at any step."""

from __future__ import annotations

import pytest
import torch

from handgrad.chunks import ChunkedTensors, ChunkLoader, ChunkSampler

# 2500 examples at batch 32: 79 steps an epoch (the last of 4 examples), in chunks of 19, 20, 20, 20 steps.
N, BATCH, CHUNK = 2500, 32, 640


def steps_of(sampler: ChunkSampler, epoch: int) -> list[torch.Tensor]:
    """Every mini-batch the sampler yields in ``epoch``, as index tensors."""
    sampler.set_epoch(epoch)
    return [rows for chunk in sampler for rows in chunk.split(BATCH)]


def test_the_layout_of_an_epoch_in_steps():
    sampler = ChunkSampler(N, BATCH, CHUNK, shuffle=False)
    assert sampler.steps() == 79 and [sampler.steps(c) for c in range(5)] == [0, 19, 39, 59, 79]
    assert sampler.steps(2.0) == 39 and sampler.steps(float("inf")) == 79  # Lightning's num_training_batches


@pytest.mark.parametrize("steps, where", [(0, (0, 0)), (6, (0, 6)), (18, (0, 18)), (19, (1, 0)), (20, (1, 1)),
                                          (71, (3, 12)), (78, (3, 19)), (79, (4, 0))])
def test_locate_names_the_chunk_and_the_steps_into_it(steps, where):
    assert ChunkSampler(N, BATCH, CHUNK, shuffle=False).locate(steps) == where


@pytest.mark.parametrize("steps", [0, 6, 19, 20, 71, 78])
def test_an_epoch_resumed_at_any_step_yields_the_rest_of_the_same_order(steps):
    whole = steps_of(ChunkSampler(N, BATCH, CHUNK, shuffle=True, seed=3), epoch=2)
    resumed = ChunkSampler(N, BATCH, CHUNK, shuffle=True, seed=3)
    resumed.resume_at(2, *resumed.locate(steps))
    rest = steps_of(resumed, epoch=2)
    assert len(rest) == 79 - steps and all(map(torch.equal, rest, whole[steps:]))
    assert len(steps_of(resumed, epoch=3)) == 79  # the next epoch is whole again


def test_a_resume_for_another_epoch_is_ignored():
    sampler = ChunkSampler(N, BATCH, CHUNK, shuffle=True)
    sampler.resume_at(1, 2, 5)
    assert len(steps_of(sampler, epoch=0)) == 79


def test_the_loader_state_round_trips_and_reads_states_without_skip_steps():
    sampler = ChunkSampler(N, BATCH, CHUNK, shuffle=True)
    sampler.set_epoch(4)
    loader = ChunkLoader(ChunkedTensors(torch.zeros(N, 2), torch.zeros(N), BATCH), sampler, lambda: 2)
    assert loader.state_dict() == {"epoch": 4, "chunks_done": 2, "skip_steps": 0}
    loader.load_state_dict({"epoch": 4, "chunks_done": 3})  # a checkpoint written before skip_steps existed
    assert sampler.resume == (4, 3, 0)
