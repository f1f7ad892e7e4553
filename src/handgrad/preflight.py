"""Checks made before a run starts, so that what cannot work stops it with one line and exit status 2
before anything is written (handgrad.errors.ConfigError: the file or value, what is wrong, the fix).

    check_resume       the checkpoint to resume from: readable, a handgrad training checkpoint, of this
                       vocabulary (a language model's), network and optimiser, and of data settings that
                       keep its place in the epoch (--restart_epoch)
    check_run_folder   the run's folder and its checkpoints/ can be written
    check_settings     numbers that are not finite (YAML's .nan, .inf), a run that would train nothing

handgrad.cli runs them after it built the Trainer and before trainer.fit: a refused resume leaves the
run folder it would continue, its config.yaml included, as it was.
"""

from __future__ import annotations

import glob
import math
import os
import uuid
import zipfile
from typing import Any

import torch
import yaml

from handgrad.checkpoint_io import SAVE_DIR_HINT, write_advice
from handgrad.errors import ConfigError
from handgrad.resume import POSITION

TRAINING_KEYS = ("pytorch-lightning_version", "state_dict", "loops", "optimizer_states", "global_step")
ORDER = ("dataset", "val_size", "seed")  # each changes the split and every epoch's order
PLACE = ("batch_size", "chunk_size")  # each moves the place of a step in its epoch


def check_resume(path: str, model: torch.nn.Module, data_settings: dict[str, Any], restart_epoch: bool) -> None:
    """Refuse a checkpoint that is damaged, foreign, of another network or of data settings that would
    change the data order or the place in the epoch (unless ``restart_epoch``)."""
    checkpoint = read_checkpoint(path)
    check_data_settings(path, checkpoint, data_settings, restart_epoch, keys=("dataset",))
    check_vocabulary(path, checkpoint, model)
    check_network(path, checkpoint, model)
    check_optimizer(path, checkpoint, model)
    check_data_settings(path, checkpoint, data_settings, restart_epoch, keys=ORDER + PLACE)


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint's contents, or a ConfigError naming what is wrong with the file."""
    instead = _another_checkpoint(path)
    size = os.path.getsize(path)
    if size == 0:
        raise ConfigError(f"--ckpt_path {path} is empty (0 bytes): its write was cut short; {instead}")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"--ckpt_path {path} is not a checkpoint ({size:,} bytes that are not a torch zip archive: "
                          f"cut short, or another kind of file); {instead}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # a handgrad checkpoint loads so
    except Exception as err:
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise ConfigError(f"--ckpt_path {path} cannot be read ({reason}); {instead}") from None
    missing = [key for key in TRAINING_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        what = f"no {', '.join(missing)}" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise ConfigError(f"--ckpt_path {path} is not a training checkpoint of handgrad ({what}); pass a last.ckpt "
                          "or epoch*.ckpt from a run's checkpoints/ folder")
    return checkpoint


def _another_checkpoint(path: str) -> str:
    """The fix for an unusable checkpoint: another one beside it, or a fresh start."""
    others = [p for p in glob.glob(os.path.join(glob.escape(os.path.dirname(path) or "."), "*.ckpt"))
              if not os.path.samefile(p, path) and zipfile.is_zipfile(p)]
    if others:
        return f"pass another checkpoint, e.g. --ckpt_path {max(others, key=os.path.getmtime)}, or start afresh " \
               "without --ckpt_path"
    return "start afresh without --ckpt_path"


def check_vocabulary(path: str, checkpoint: dict[str, Any], model: torch.nn.Module) -> None:
    """Refuse a language model's checkpoint whose vocabulary (token i = vocab[i]) is not this run's data's."""
    theirs, ours = (checkpoint.get("hyper_parameters") or {}).get("vocab"), getattr(model, "vocab", None)
    if theirs is None or ours is None or theirs == ours:
        return
    only_there, only_here = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    what = (f"{''.join(only_there)[:20]!r} only there" if only_there else "") + \
        ("; " if only_there and only_here else "") + (f"{''.join(only_here)[:20]!r} only here" if only_here else "")
    raise ConfigError(f"--ckpt_path {path} was trained on a vocabulary of {len(theirs)} characters, this run's data "
                      f"has {len(ours)} ({what or 'in another order'}); resume with the text it was trained on "
                      "(data.path in its run's config.yaml), or start afresh without --ckpt_path")


def check_network(path: str, checkpoint: dict[str, Any], model: torch.nn.Module) -> None:
    """Refuse a checkpoint whose weights do not fit this run's network (another size or architecture)."""
    theirs, ours = checkpoint["state_dict"], model.state_dict()
    differ = [(name, tuple(theirs[name].shape), tuple(ours[name].shape)) for name in ours
              if name in theirs and theirs[name].shape != ours[name].shape]
    unmatched = sorted(set(ours) ^ set(theirs))
    if not differ and not unmatched:
        return
    what = (f"{differ[0][0]} is {differ[0][1]} there and {differ[0][2]} here" if differ else
            f"{unmatched[0]} is in {'this network only' if unmatched[0] in ours else 'the checkpoint only'}")
    sizes = checkpoint.get("hyper_parameters", {}).get("net", {}).get("init_args", {}).get("sizes")
    here = getattr(getattr(model, "net", None), "spec", {}).get("sizes")
    if sizes and here:
        what += f" (its model.net sizes {sizes}, this run's {here})"
    raise ConfigError(f"--ckpt_path {path} holds another network: {what}; pass the model settings it was trained "
                      "with (the config.yaml of its run), or start afresh without --ckpt_path")


def check_optimizer(path: str, checkpoint: dict[str, Any], model: torch.nn.Module) -> None:
    """Refuse a checkpoint of another optimiser: its state (SGD's momentum buffers, Adam's averages) does not
    fit this run's (a checkpoint saved without the setting was trained with SGD, then the only one)."""
    theirs = str(checkpoint.get("hyper_parameters", {}).get("optimizer", "sgd")).lower()
    ours = str(getattr(model, "hparams", {}).get("optimizer", "sgd")).lower()
    if theirs != ours:
        raise ConfigError(f"--ckpt_path {path} was trained with model.optimizer={theirs!r}; this run has "
                          f"model.optimizer={ours!r}, whose state differs; pass --model.optimizer {theirs}, or start "
                          "afresh without --ckpt_path")


def check_data_settings(path: str, checkpoint: dict[str, Any], ours: dict[str, Any], restart_epoch: bool,
                        keys: tuple[str, ...]) -> None:
    """Refuse a data setting that differs from the checkpoint's where it would change the data order
    (dataset, val_size, seed) or, in the middle of an epoch, the place in it (batch_size, chunk_size)."""
    theirs = checkpoint.get("datamodule_hyper_parameters") or {}
    position = checkpoint.get(POSITION)
    mid_epoch = position is None or position["steps"] > 0  # unknown (written before positions were kept): assume so
    for key in keys:
        if key not in theirs or key not in ours or theirs[key] == ours[key] or restart_epoch:
            continue
        if key in PLACE and not mid_epoch:
            continue  # at an epoch boundary only the steps of the epochs to come change
        if position is None:
            where = "was written (before handgrad kept its place in the epoch)"
            again = "its epoch"
        elif mid_epoch:
            where = (f"stopped {position['steps']} of {position['steps_per_epoch']} steps into epoch "
                     f"{position['epoch'] + 1}")
            again = f"epoch {position['epoch'] + 1}"
        else:
            where = f"stopped at the end of epoch {position['epoch']}"
            again = f"epoch {position['epoch'] + 1}"
        why = "changes the data order (the split and each epoch's shuffle)" if key in ORDER else \
            "moves the place of its steps in the epoch"
        raise ConfigError(f"--ckpt_path {path} {where} with data.{key}={theirs[key]!r}; this run has "
                          f"data.{key}={ours[key]!r}, which {why}; pass --data.{key} {theirs[key]}, or --restart_epoch "
                          f"true to train {again} afresh from its first chunk")


def check_run_folder(folder: str | None) -> None:
    """Refuse a run folder (or its checkpoints/) that cannot be created or written."""
    if not folder:
        return
    for path in (folder, os.path.join(folder, "checkpoints")):
        probe = os.path.join(path, f".write-test-{uuid.uuid4().hex}")
        try:
            os.makedirs(path, exist_ok=True)
            with open(probe, "wb") as file:
                file.write(b"handgrad")
                file.flush()
                os.fsync(file.fileno())
            os.unlink(probe)
        except OSError as err:
            blocker = next((p for p in _parents(path) if os.path.exists(p) and not os.path.isdir(p)), None)
            if blocker:
                raise ConfigError(f"cannot write the run folder {folder}: {blocker} is a file, not a folder; move it "
                                  f"away, or pass {SAVE_DIR_HINT} with another folder") from None
            raise ConfigError(f"cannot write the run folder {folder}: {err.strerror} ({err.filename}); "
                              f"{write_advice(err.errno)}") from None


def _parents(path: str) -> list[str]:
    parts = os.path.normpath(path).split(os.sep)
    return [os.sep.join(parts[:i]) or os.sep for i in range(1, len(parts) + 1)]


def check_settings(config: Any, defaults: dict[str, Any], files: list[str]) -> None:
    """Refuse a number that is not finite anywhere in the config, and a run that would train nothing."""
    for key, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            default = defaults.get(key)
            fix = f"e.g. its default {default}" if isinstance(default, (int, float)) and math.isfinite(default) \
                else "a finite number"
            source = next((f" (in {path})" for path in reversed(files) if _sets(path, key)), "")
            raise ConfigError(f"{key}={value}{source} is not a finite number; use {fix}, as the command line "
                              "would require")
    trainer = config.trainer
    for key, value in (("max_epochs", trainer.max_epochs), ("max_steps", trainer.max_steps),
                       ("limit_train_batches", trainer.limit_train_batches)):
        if value == 0:
            counts = " (it counts chunks of up to data.chunk_size examples)" if key == "limit_train_batches" else ""
            raise ConfigError(f"trainer.{key}={value} trains nothing{counts}, and the test would score untrained "
                              f"weights; remove it, or give a number >= 1")


def _sets(path: str, key: str) -> bool:
    """Whether the YAML file ``path`` sets the dotted ``key`` (list items as [i])."""
    try:
        with open(path, encoding="utf-8") as file:
            node: Any = yaml.safe_load(file)
    except (OSError, yaml.YAMLError):
        return False
    for part in key.replace("[", ".[").split("."):
        if part.startswith("["):
            index = int(part[1:-1])
            node = node[index] if isinstance(node, list) and index < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return False
    return True


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every value in a jsonargparse Namespace, through dicts and lists."""
    if hasattr(node, "__dict__") and type(node).__name__ == "Namespace":
        node = vars(node)
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}.{key}" if prefix else key)]
    if isinstance(node, (list, tuple)):
        return [leaf for i, value in enumerate(node) for leaf in _leaves(value, f"{prefix}[{i}]")]
    return [(prefix, node)]
