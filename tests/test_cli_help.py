"""handgrad.cli_help: -h shows handgrad's own options with the values of the config in use, short enough to
read; --help_all shows every option with the config's values, without a list of every torch Module."""

from __future__ import annotations

import pytest

from handgrad import cli
from handgrad.cli_help import BriefSubclasses, first_sentence, option_lines


def help_text(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit:
        cli.main(list(args))
    assert exit.value.code == 0
    return capsys.readouterr().out


def test_help_lists_handgrads_options_with_the_values_of_the_config(capsys):
    text = help_text(capsys, "--config", "nielsen_ch1", "--help")
    lines = text.splitlines()
    assert 60 <= len(lines) <= 100 and max(map(len, lines)) <= 100, (len(lines), max(map(len, lines)))
    for shown in ("--config nielsen_ch1", "--model.lr 15.0", "--model.loss mse", "--model.net.sizes [784, 30, 10]",
                  "--model.net.init nielsen_scaled", "--data.batch_size 10", "--trainer.max_epochs 30",
                  "--checkpoint.monitor val/acc", "--threads 1", "--ckpt_path null"):
        assert shown in text, shown
    for pointer in ("--model.net.help handgrad.models.MLP", "--help_all", "--print_config", "--logdir logs"):
        assert pointer in text, pointer
    assert "known subclasses" not in text and "torchvision.ops" not in text and "torch.nn.modules" not in text


def test_options_given_with_help_show_in_its_values(capsys):
    text = help_text(capsys, "--config", "nielsen_ch1", "--model.lr", "7", "-h", "--data.batch_size", "full")
    assert "--model.lr 7.0" in text and "--data.batch_size full" in text


def test_help_of_a_convolutional_config_shows_its_network(capsys):
    text = help_text(capsys, "--config", "lenet5", "--help")
    assert "The network, --model.net handgrad.models.LeNet5 (or handgrad.models.MLP)" in text
    assert "--model.net.batch_norm true" in text and "--model.net.pool max" in text
    assert "--model.net.sizes" not in text


def test_help_without_a_config_shows_the_default_one(capsys):
    text = help_text(capsys, "--help")
    assert "--config mnist_mlp" in text and "--model.net.sizes [784, 512, 256, 10]" in text


def test_help_with_a_value_that_does_not_parse_says_so_and_shows_the_defaults(capsys):
    text = help_text(capsys, "--config", "spirals", "--model.lr", "fast", "--help")
    said = " ".join(text.split())
    assert "with the options given, does not parse (Parser key \"model.lr\": Expected a <class 'float'>. Got value: " \
           "fast), so the values shown are the classes' defaults." in said
    assert "--model.lr 0.1" in text  # Classifier's own default


def test_help_all_lists_every_option_with_the_configs_values(capsys):
    text = help_text(capsys, "--config", "nielsen_ch1", "--help_all")
    assert len(text.splitlines()) > 400
    for option in ("--trainer.gradient_clip_val", "--trainer.callbacks", "--checkpoint.save_top_k", "--model.fused"):
        assert option in text, option
    assert "default: 15.0" in text  # nielsen_ch1's learning rate, not Classifier's 0.1
    assert "one of: handgrad.models.MLP, handgrad.models.LeNet5; --model.net.help" in " ".join(text.split())
    assert "torchvision.ops" not in text and "torch.nn.modules.linear.Linear" not in text


def test_brief_subclasses_keeps_handgrads_networks_only():
    class Action:  # what the formatter reads of an option typed torch.nn.Module
        help = "the network"

    class Formatter(BriefSubclasses):
        def __init__(self):
            pass

    listed = "the network (required, known subclasses: torch.nn.Module, torchvision.ops.MLP, handgrad.models.MLP, " \
             "handgrad.nn.Linear, handgrad.models.LeNet5)"
    original = BriefSubclasses.__mro__[1]._get_help_string
    try:
        BriefSubclasses.__mro__[1]._get_help_string = lambda self, action: listed
        assert Formatter()._get_help_string(Action()) == (
            "the network (required, one of: handgrad.models.MLP, handgrad.models.LeNet5; --model.net.help <one of "
            "them> lists its options)")
    finally:
        BriefSubclasses.__mro__[1]._get_help_string = original


def test_an_options_help_is_its_first_sentence_beside_its_value():
    assert first_sentence("layer widths, input first, e.g. [784, 30, 10]. More here.") == (
        "layer widths, input first, e.g. [784, 30, 10]")
    assert option_lines("--model.lr", 0.05, "learning rate, > 0", 100) == [
        "  --model.lr 0.05                 learning rate, > 0"]
    long = option_lines("--model.net.sizes", [784, 512, 256, 10], "layer widths", 100)
    assert long == ["  --model.net.sizes [784, 512, 256, 10]", " " * 34 + "layer widths"]
    assert option_lines("--data.download", True, "fetch", 100)[0].startswith("  --data.download true ")
