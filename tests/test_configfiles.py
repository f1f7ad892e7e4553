"""handgrad.configfiles: --config takes a shipped config by name, or any YAML file."""

from __future__ import annotations

import pytest
from conftest import REPO

from handgrad.configfiles import config_dir, config_label, packaged_configs, resolve_config, with_config_files
from handgrad.errors import ConfigError

SHIPPED = ["edge_of_stability", "full_batch", "gpt_addition", "gpt_chars", "lenet5", "lstm_chars", "mini_batch",
           "mlp_regularized", "mnist_mlp", "nielsen_ch1", "sgd", "spirals"]


def test_the_shipped_configs_are_the_files_under_configs():
    assert config_dir() == REPO / "configs" and packaged_configs() == SHIPPED


@pytest.mark.parametrize("given", ["nielsen_ch1", "nielsen_ch1.yaml", "configs/nielsen_ch1.yaml"])
def test_a_name_is_a_shipped_config_from_any_folder(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside a clone: no configs/ here
    assert resolve_config(given) == str(config_dir() / "nielsen_ch1.yaml")


def test_a_file_is_taken_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spirals.yaml").write_text("trainer:\n  max_epochs: 1\n")  # a user's file of a shipped name
    assert resolve_config("spirals.yaml") == "spirals.yaml"
    assert with_config_files(["--config=spirals.yaml", "-c", "sgd"]) == [
        "--config=spirals.yaml", "-c", str(config_dir() / "sgd.yaml")]


def test_without_a_config_the_default_comes_first():
    assert with_config_files(["--model.lr", "1"]) == ["--config", str(config_dir() / "mnist_mlp.yaml"),
                                                      "--model.lr", "1"]


def test_an_unknown_config_names_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"^--config nielsen: no such file, and no shipped config of that name; pass "
                                          r"a YAML file or one of edge_of_stability, full_batch, .*, spirals$"):
        resolve_config("nielsen")


def test_a_config_is_named_as_a_person_names_it(tmp_path):
    assert config_label(str(config_dir() / "sgd.yaml")) == "sgd"
    assert config_label(str(tmp_path / "mine.yaml")) == str(tmp_path / "mine.yaml")
