"""Where a fit stands, kept in every checkpoint, so that a resumed run ends where the uninterrupted one ends.

Lightning's loop state alone does not say it. An epoch that max_steps or max_time ended early is
counted as processed and its epoch-end hooks run, so its checkpoint resumes at the *next* epoch; a
chunk that max_steps cut short counts as done; and Lightning keeps no random state, let alone one
per process. ``ResumableModule``, the base of handgrad's LightningModules, writes into every
checkpoint

    checkpoint["handgrad_position"]          {"epoch", "steps" (into it), "steps_per_epoch"}
    checkpoint["loops"]["fit_loop"]          rewritten to say the same: "epoch e started, c chunks done,
                                             j steps into chunk c", or "epoch e, not started" at an epoch end
    checkpoint["torch_rng_state"]            torch's random state (dropout's masks) of rank 0, and under DDP
    checkpoint["torch_rng_states_by_rank"]   every rank's (each rank draws masks for its own rows)

and puts them back when a fit resumes. The place comes from the optimiser step count: every epoch has
the same number of steps, ``train_layout().steps()``, counted from ``position_base``, the step at which
an epoch began under this run's data settings (0, or where the resumed checkpoint's epoch began).
A checkpoint written before positions were recorded gets its place from its step count alone, so its
loop state is repaired on loading. ``restart_epoch`` (the command line's --restart_epoch) resumes at
the start of the checkpoint's epoch instead, keeping the steps it took.

The datamodule provides ``train_layout(batch_size=None, chunk_size=None)``, an object with
``steps(chunks)`` (optimiser steps in an epoch's first ``chunks`` chunks) and ``locate(steps)``
((chunk, steps into it)), as handgrad.chunks.ChunkSampler does. The layout of Lightning 2.6's checkpoints is relied on
(pyproject.toml pins lightning to 2.6.x); tests/test_resume.py guards it bit for bit.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import lightning.pytorch
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from handgrad.errors import ConfigError

POSITION = "handgrad_position"


class ResumableModule(L.LightningModule):
    """A LightningModule whose checkpoints hold the fit's exact place and every rank's random state.

    A subclass that overrides on_save_checkpoint / on_load_checkpoint calls super() first."""

    restart_epoch: bool = False  # resume at the start of the checkpoint's epoch (--restart_epoch)
    position_base: tuple[int, int] = (0, 0)  # (optimiser step, epoch) at which an epoch began
    loaded_step: int | None = None  # optimiser step and epoch (0-based) of the latest checkpoint loaded
    loaded_epoch: int | None = None

    @property
    def tested_step(self) -> int:
        """The optimiser step of the weights trainer.test runs on: the loaded checkpoint's, else the latest."""
        if self.trainer.ckpt_path is not None and self.loaded_step is not None:
            return self.loaded_step
        return self.global_step

    def fit_position(self, global_step: int | None = None, steps_per_epoch: int | None = None) -> tuple[int, int]:
        """(epoch, optimiser steps into it), both from 0, after ``global_step`` steps (default: the trainer's)."""
        step = self.trainer.global_step if global_step is None else global_step
        per_epoch = self.epoch_steps() if steps_per_epoch is None else steps_per_epoch
        base_step, base_epoch = self.position_base
        if per_epoch <= 0:
            return base_epoch, 0
        epochs, steps = divmod(step - base_step, per_epoch)
        return base_epoch + epochs, steps

    def epoch_steps(self) -> int:
        """Optimiser steps in an epoch of this fit (limit_train_batches counts its chunks); 0 if unknown."""
        layout = self._layout()
        return layout.steps(self.trainer.num_training_batches) if layout is not None else 0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(self._random_states())
        loop, layout = checkpoint.get("loops", {}).get("fit_loop"), self._layout()
        if loop is None or layout is None or self.trainer.state.fn != TrainerFn.FITTING:
            return
        per_epoch = self.epoch_steps()
        epoch, steps = self.fit_position(checkpoint["global_step"], per_epoch)
        checkpoint[POSITION] = {"epoch": epoch, "steps": steps, "steps_per_epoch": per_epoch}
        write_loop_position(loop, epoch, steps, *layout.locate(steps))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loaded_step, self.loaded_epoch = checkpoint.get("global_step"), checkpoint.get("epoch")
        self._restore_random_states(checkpoint)
        loop, layout = checkpoint.get("loops", {}).get("fit_loop"), self._layout()
        if loop is None or layout is None or self.trainer.state.fn != TrainerFn.FITTING:
            return
        saved = checkpoint.get(POSITION)
        if saved is not None:
            epoch, steps = saved["epoch"], saved["steps"]
            if steps and not self.restart_epoch and saved["steps_per_epoch"] != layout.steps():
                raise ConfigError(f"the checkpoint stopped {steps} of {saved['steps_per_epoch']} steps into epoch "
                                  f"{epoch + 1}, but this run's data settings make epochs of {layout.steps()} steps; "
                                  "resume with the data settings it was trained with, or with restart_epoch")
        else:  # written before positions were kept: from its step count, in epochs of its own data settings
            settings = checkpoint.get("datamodule_hyper_parameters") or {}
            then = self._layout(**{key: settings[key] for key in ("batch_size", "chunk_size") if key in settings})
            epoch, steps = divmod(checkpoint["global_step"], then.steps())
        if self.restart_epoch:
            steps = 0  # the steps taken stay in the weights; the epoch starts again at its first chunk
        self.position_base = (checkpoint["global_step"] - steps, epoch)
        write_loop_position(loop, epoch, steps, *layout.locate(steps))

    # ----------------------------------------------------------------------- helpers

    def _layout(self, **settings: Any) -> Any:
        train_layout = getattr(getattr(self._trainer, "datamodule", None), "train_layout", None)
        return train_layout(**settings) if train_layout is not None else None

    def _random_states(self) -> dict[str, Any]:
        """torch's random state (and CUDA's for this process's device); under DDP gathered from every rank,
        a collective: Lightning dumps a checkpoint on every rank (rank 0 writes it)."""
        states: dict[str, Any] = {"torch_rng_state": torch.get_rng_state()}
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            states["cuda_rng_states"] = torch.cuda.get_rng_state_all()
        if self.trainer.world_size > 1:
            states["torch_rng_states_by_rank"] = self._gathered(torch.get_rng_state())
            if cuda:
                states["cuda_rng_state_by_rank"] = self._gathered(torch.cuda.get_rng_state())
        return states

    def _gathered(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``state`` (a byte tensor of one size), in rank order, on the CPU."""
        device = self.trainer.strategy.root_device  # NCCL gathers CUDA tensors only
        rows = [torch.empty_like(state, device=device) for _ in range(self.trainer.world_size)]
        torch.distributed.all_gather(rows, state.to(device))
        return [row.cpu() for row in rows]

    def _restore_random_states(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is None:  # load_from_checkpoint for inference: the weights only, the random state untouched
            return
        rank, ranks = self.trainer.global_rank, self.trainer.world_size
        by_rank = checkpoint.get("torch_rng_states_by_rank")
        if by_rank is not None and len(by_rank) == ranks:
            torch.set_rng_state(by_rank[rank])
        elif "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
            if by_rank is not None or ranks > 1:
                saved = len(by_rank or [0])
                rank_zero_info(f"The checkpoint holds the random state of {saved} process(es) and this run has "
                               f"{ranks}: from here on dropout's masks differ from those of a run on {saved}.")
        if torch.cuda.is_available():
            cuda_by_rank = checkpoint.get("cuda_rng_state_by_rank")
            if cuda_by_rank is not None and len(cuda_by_rank) == ranks:
                torch.cuda.set_rng_state(cuda_by_rank[rank])
            elif "cuda_rng_states" in checkpoint:
                torch.cuda.set_rng_state_all(checkpoint["cuda_rng_states"])


def write_loop_position(loop: dict[str, Any], epoch: int, steps: int, chunk: int, skip: int) -> None:
    """Rewrite a checkpoint's fit-loop state (``checkpoint["loops"]["fit_loop"]``) to say: epoch ``epoch``
    (from 0), ``steps`` optimiser steps into it, that is ``chunk`` chunks done and ``skip`` steps into the next.

    Lightning (2.6) then restarts mid-epoch (its stage RESTARTED_MID_EPOCH: no epoch-start hooks, the
    loader state loaded) or, with ``steps`` 0, starts epoch ``epoch`` afresh."""
    started = epoch + 1 if steps else epoch
    try:
        for key in ("total", "current"):  # epoch e started (if steps), epochs before it processed and completed
            progress = loop["epoch_progress"][key]
            offset = progress["ready"] - loop["epoch_progress"]["current"]["ready"]
            progress.update(ready=offset + started, started=offset + started, processed=offset + epoch,
                            completed=offset + epoch)
        batches = loop["epoch_loop.batch_progress"]  # chunks: `chunk` of this epoch done, none half done
        total = batches["total"]["ready"] + chunk - batches["current"]["ready"]
        batches["current"] = dict.fromkeys(("ready", "started", "processed", "completed"), chunk)
        batches["total"] = dict.fromkeys(("ready", "started", "processed", "completed"), total)
        batches["is_last_batch"] = False
        for state in loop["state_dict"].get("combined_loader", [])[:1]:  # the training loader (handgrad.chunks)
            state.update(epoch=epoch, chunks_done=chunk, skip_steps=skip)
    except KeyError as missing:
        raise ConfigError(f"this checkpoint's loop state has no {missing} entry: it was written by another Lightning "
                          f"than this one ({lightning.pytorch.__version__}), whose layout handgrad reads; resume with "
                          "the Lightning it was written with") from None
