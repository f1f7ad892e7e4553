"""Text from a language model's checkpoint, and the exact-match accuracy of an addition model
(the command line of scripts/generate.py).

    python scripts/generate.py logs/gpt_chars/version_0/checkpoints/last.ckpt --prompt "The " --length 300
    python scripts/generate.py CKPT --temperature 0.8 --top_k 10 --seed 1 --num_samples 3
    python scripts/generate.py logs/gpt_addition/version_0/checkpoints/last.ckpt --accuracy   # test problems

The checkpoint holds everything needed: the network's class and arguments (hyper_parameters["net"]),
its weights, and the vocabulary (hyper_parameters["vocab"]); an addition model's data settings rebuild
its held-out test problems, whose answers are generated greedily and compared whole.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from handgrad.errors import ConfigError
from handgrad.models_lm import generate
from handgrad.preflight import read_checkpoint
from handgrad.text_data import AdditionDataModule


def load(path: str) -> tuple[torch.nn.Module, str, dict]:
    """(the network in eval mode, its vocabulary, the data's hyperparameters) of a LanguageModel checkpoint."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file; pass a .ckpt file, e.g. "
                          "logs/gpt_chars/version_0/checkpoints/last.ckpt")
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    net, vocab = hparams.get("net"), hparams.get("vocab")
    if not isinstance(net, dict) or not vocab:
        raise ConfigError(f"{path} is not a language model's checkpoint (no model.net and model.vocab in its "
                          "hyperparameters); pass a checkpoint of a GPT or CharLSTM run, e.g. "
                          "logs/gpt_chars/version_0/checkpoints/last.ckpt")
    module, _, name = net["class_path"].rpartition(".")
    model = getattr(importlib.import_module(module), name)(**net["init_args"])
    model.load_state_dict({key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items()
                           if key.startswith("net.")})
    return model.eval(), vocab, checkpoint.get("datamodule_hyper_parameters") or {}


def encode(prompt: str, vocab: str) -> list[int]:
    """Token ids of the prompt, or a ConfigError naming the characters outside the vocabulary."""
    outside = sorted(set(prompt) - set(vocab))
    if outside:
        raise ConfigError(f"--prompt {prompt!r} has characters outside the model's vocabulary: {''.join(outside)!r}; "
                          f"use only characters of its training text ({len(vocab)} characters: {vocab[:40]!r}...)")
    return [vocab.index(char) for char in prompt]


def addition_accuracy(model: torch.nn.Module, data: AdditionDataModule, split: str = "test",
                      batch_size: int = 1000) -> tuple[float, list[str]]:
    """Exact-match accuracy of greedy answers on the split's problems, and the first five as answered:
    '72+65=731   72+65=137 (right)', the generated digits, then the sum read the usual way."""
    problems = data.problems(split)
    prompt_length = 2 * data.digits + 2  # "12+34="
    answered: list[str] = []
    for start in range(0, len(problems), batch_size):
        batch = problems[start:start + batch_size]
        ids = torch.tensor([encode(p[:prompt_length], data.vocab) for p in batch])
        out = generate(model, ids, len(batch[0]) - prompt_length, temperature=0)
        answered += ["".join(data.vocab[int(i)] for i in row) for row in out]
    right = [a == p for a, p in zip(answered, problems, strict=True)]
    shown = [f"{a}   {a[:prompt_length]}{a[prompt_length:][::-1]} ({'right' if ok else 'wrong'})"
             for a, ok in zip(answered[:5], right, strict=False)]  # the sum as it is read: most significant first
    return sum(right) / len(problems), shown


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sample from a handgrad language model's checkpoint.")
    parser.add_argument("checkpoint", help="a .ckpt file of a GPT or CharLSTM run")
    parser.add_argument("--prompt", default="\n", help="the text to continue (characters of the vocabulary)")
    parser.add_argument("--length", type=int, default=300, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: always the most likely character")
    parser.add_argument("--top_k", type=int, default=None, help="sample among the k most likely characters only")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accuracy", action="store_true", help="an addition model: exact match on its test problems")
    options = parser.parse_args(args)
    try:
        if options.length < 0 or options.temperature < 0 or (options.top_k is not None and options.top_k < 1):
            raise ConfigError(f"--length {options.length}, --temperature {options.temperature} and --top_k "
                              f"{options.top_k} must be >= 0, >= 0 and >= 1; use e.g. --length 300 --temperature 0.8")
        model, vocab, data_settings = load(options.checkpoint)
        if options.accuracy:
            if "digits" not in data_settings:
                raise ConfigError(f"--accuracy scores an addition model, but {options.checkpoint} was trained on "
                                  "text; leave --accuracy out to sample from it")
            settings = {k: data_settings[k] for k in ("digits", "val_size", "test_size", "seed") if k in data_settings}
            accuracy, examples = addition_accuracy(model, AdditionDataModule(**settings))
            print("\n".join(examples))
            print(f"exact match on the {settings.get('test_size', 1000)} test problems: {100 * accuracy:.2f}%")
            return 0
        ids = torch.tensor([encode(options.prompt, vocab)] * options.num_samples)
        out = generate(model, ids, options.length, options.temperature, options.top_k,
                       torch.Generator().manual_seed(options.seed))
        for row in out:
            print("".join(vocab[int(i)] for i in row))
            print("-" * 40)
        return 0
    except ConfigError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
