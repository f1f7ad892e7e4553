"""The language-model benchmark's rows: it runs, and what it measures is measured on the right things."""

from __future__ import annotations

import torch

from handgrad.benchmarks import language_models as bench
from handgrad.models_lm import GPT


def test_saved_bytes_counts_activations_not_parameters():
    torch.manual_seed(0)
    gpt = GPT(11, 8, n_layer=1, n_head=2, n_embd=16)
    x, y = torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8))
    small = bench.saved_bytes(gpt, x, y)
    assert 0 < small < sum(p.numel() * 4 for p in gpt.parameters()) * 4
    assert bench.saved_bytes(gpt, x.repeat(4, 1), y.repeat(4, 1)) > 3 * small  # grows with the batch


def test_the_benchmark_prints_its_table(capsys, one_thread, monkeypatch):
    monkeypatch.setattr(bench, "MODELS", {"GPT (tiny)": lambda backend: GPT(bench.VOCAB, bench.T, 1, 2, 16,
                                                                            backend=backend)})
    assert bench.main(["--repeats", "1", "--epoch_steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "| GPT (tiny) |" in out and "| 2 |" in out and "Lightning / plain" in out
