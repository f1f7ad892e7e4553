"""The language models' data (characters of a text, addition problems) and the one-line errors for input
that cannot work, each raised before any training."""

from __future__ import annotations

import torch

from handgrad import cli, sampling
from handgrad.text_data import IGNORE, AdditionDataModule, TextDataModule, addition_problem, default_text

TINY = ["--model.net.n_layer", "1", "--model.net.n_head", "2", "--model.net.n_embd", "16", "--data.block_size", "16",
        "--data.batch_size", "8", "--model.sample_prompt", "a", "--trainer.enable_model_summary", "false"]


def run(tmp_path, monkeypatch, *args: str) -> int:
    monkeypatch.chdir(tmp_path)
    return cli.main(["--config", "gpt_chars", *TINY, *args])


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --------------------------------------------------------------------------- the data


def test_text_windows_are_the_text_shifted_by_one(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 40, encoding="utf-8")
    data = TextDataModule(str(path), block_size=8)
    assert data.vocab == "abcdefghij"
    x, y = data.splits["train"]
    assert x.shape[1] == 8 and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1, 0:1], y[0, -1:])
    assert sum(len(s[0]) for s in data.splits.values()) == (400 - 1) // 8  # every window, once
    assert len(data.splits["val"][0]) == len(data.splits["test"][0]) == (400 - 1) // 8 // 20


def test_the_default_text_is_python_s_documentation():
    text = default_text()
    assert len(text) > 400_000 and 'The "if" statement' in text


def test_addition_problems_score_only_the_reversed_sum():
    assert addition_problem(12, 34, 2) == "12+34=640" and addition_problem(99, 99, 2) == "99+99=891"
    data = AdditionDataModule(digits=2, val_size=50, test_size=100)
    x, y = data.splits["train"]
    assert x.shape == (10_000 - 150, 8) and data.block_size == 8
    assert (y[:, :5] == IGNORE).all() and (y[:, 5:] >= 0).all()
    problems = [set(data.problems(split)) for split in ("train", "val", "test")]
    assert sum(map(len, problems)) == 10_000 and not (problems[0] & problems[2]) and not (problems[1] & problems[2])
    for problem in data.problems("test")[:20]:
        a, b = int(problem[:2]), int(problem[3:5])
        assert int(problem[6:][::-1]) == a + b


# --------------------------------------------------------------------------- input that cannot work


def test_an_empty_file_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert run(tmp_path, monkeypatch, "--data.path", "empty.txt") == 2
    assert "data.path='empty.txt' is empty (0 bytes); pass a UTF-8 text file" in error_line(capsys)
    assert not (tmp_path / "logs").exists()  # before anything is written


def test_a_file_that_is_not_utf8_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "latin1.txt").write_bytes("café au lait ".encode("latin-1") * 100)
    assert run(tmp_path, monkeypatch, "--data.path", "latin1.txt") == 2
    line = error_line(capsys)
    assert "data.path='latin1.txt' is not UTF-8 text (byte 0xe9 at offset 3); convert it, e.g. iconv" in line


def test_a_missing_file_is_refused(tmp_path, monkeypatch, capsys):
    assert run(tmp_path, monkeypatch, "--data.path", "nowhere.txt") == 2
    assert "data.path='nowhere.txt': no such file" in error_line(capsys)


def test_a_block_size_longer_than_the_text_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "short.txt").write_text("a short text " * 10, encoding="utf-8")  # 130 characters
    assert run(tmp_path, monkeypatch, "--data.path", "short.txt", "--data.block_size", "64") == 2
    assert ("data.block_size=64 is too long for data.path='short.txt': its 130 characters make fewer than 20 "
            "windows of 65; use --data.block_size 5 or less") in error_line(capsys)


def test_a_sample_prompt_outside_the_vocabulary_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "t.txt").write_text("abc " * 200, encoding="utf-8")
    assert run(tmp_path, monkeypatch, "--data.path", "t.txt", "--model.sample_prompt", "abZ") == 2
    assert "model.sample_prompt='abZ' has characters outside the vocabulary: 'Z'" in error_line(capsys)


def test_resuming_on_another_vocabulary_is_refused(tmp_path, monkeypatch, capsys, one_thread):
    (tmp_path / "a.txt").write_text("abc abd " * 100, encoding="utf-8")
    (tmp_path / "b.txt").write_text("abc xyz " * 100, encoding="utf-8")
    assert run(tmp_path, monkeypatch, "--data.path", "a.txt", "--trainer.max_steps", "2") == 0
    capsys.readouterr()
    assert run(tmp_path, monkeypatch, "--data.path", "b.txt", "--ckpt_path", "last") == 2
    line = error_line(capsys)
    assert ("was trained on a vocabulary of 5 characters, this run's data has 7 ('d' only there; 'xyz' only "
            "here)") in line
    assert "resume with the text it was trained on" in line


def test_a_prompt_outside_the_vocabulary_is_refused_by_generate(tmp_path, monkeypatch, capsys, one_thread):
    (tmp_path / "t.txt").write_text("abc " * 200, encoding="utf-8")
    assert run(tmp_path, monkeypatch, "--data.path", "t.txt", "--trainer.max_steps", "1") == 0
    capsys.readouterr()
    checkpoint = str(tmp_path / "logs" / "gpt_chars" / "version_0" / "checkpoints" / "last.ckpt")
    assert sampling.main([checkpoint, "--prompt", "cab!"]) == 2
    assert "--prompt 'cab!' has characters outside the model's vocabulary: '!'" in error_line(capsys)
    assert sampling.main([checkpoint, "--accuracy"]) == 2
    assert "--accuracy scores an addition model" in error_line(capsys)
