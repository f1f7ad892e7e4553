"""The language-model system: a GPT or CharLSTM trained on next-token prediction with handgrad's AdamW.

A Lightning batch is a chunk of many mini-batches (handgrad.data.Chunk), as for handgrad.lit_module's
Classifier, and ``training_step`` runs the plain loop over them with manual optimisation:

    for x, y in chunk:                       # x, y (batch_size, T): y is x shifted by one token
        lr <- schedule(step)                 # linear warmup, then cosine decay to min_lr
        loss = cross_entropy(net(x), y)      # mean over the scored tokens (target IGNORE: not scored)
        optimizer.zero_grad(); loss.backward()
        g <- g min(1, clip / ||g||)          # the global gradient norm clipped, written out
        optimizer.step()                     # handgrad.optim.AdamW

Losses stay tensors and are logged once per chunk against the optimiser step (train/loss, train/lr,
train/grad_norm); validation logs val/loss, val/perplexity (exp of the mean token loss) and, for a task
scored by exact match (the addition problems), val/acc; and each validation writes generated text to
TensorBoard (``samples``), drawn from a generator seeded by the step, so a resumed run samples as the
uninterrupted one does. The vocabulary (``vocab``) is a hyperparameter: every checkpoint keeps it, and
a resume with another one is refused (handgrad.preflight). Resuming is handgrad.resume's: exact.

Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW) and "SGDR" (cosine
schedule); Karpathy, nanoGPT train.py (warmup, cosine decay, clipping at 1.0, no decay on biases and
LayerNorm weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as torch_F
from lightning.pytorch.core.optimizer import LightningOptimizer
from torchmetrics import MeanMetric

import handgrad.functional as F
from handgrad.data import Chunk
from handgrad.errors import ConfigError
from handgrad.lit_module import DivergenceError, newest_checkpoint
from handgrad.models_lm import generate
from handgrad.optim import AdamW
from handgrad.resume import ResumableModule
from handgrad.text_data import IGNORE


def lr_at(step: int, lr: float, warmup_steps: int, decay_steps: int, min_lr: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based): lr (step + 1) / warmup_steps during the warmup,
    then min_lr + (lr - min_lr) (1 + cos(pi progress)) / 2 with progress from 0 to 1 at decay_steps, then min_lr."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_grad_norm(parameters: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale every gradient by min(1, max_norm / (||g|| + 1e-6)), ||g|| the norm of all of them together
    (torch.nn.utils.clip_grad_norm_'s rule); returns ||g|| before clipping, a tensor (no host sync)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm > 0:
        torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))
    return total


class LanguageModel(ResumableModule):
    """Trains ``net`` (handgrad.models.GPT or CharLSTM) to predict each next token.

    Args:
        net: the model, (B, T) token ids -> (B, T, V) logits; its backend picks the loss's
            (hand-written cross_entropy or torch's).
        vocab: the tokens' characters, token i being vocab[i]; the command line takes it from the data.
        lr: the peak learning rate, reached after the warmup.
        min_lr: where the cosine decay ends.
        warmup_steps: optimiser steps of linear warmup from lr / warmup_steps to lr.
        decay_steps: the step at which the cosine decay reaches min_lr; None: the run's last step
            (trainer.max_steps, else max_epochs times the steps of an epoch).
        weight_decay: AdamW's decoupled decay, on the matrices only (not biases, LayerNorm, ...).
        betas: AdamW's.
        grad_clip: clip the global gradient norm to this; 0: off.
        sample_prompt: the text that each validation's sample continues (TensorBoard's TEXT tab); a task
            scored by exact match shows greedy answers to validation problems instead.
        sample_length: characters generated after the prompt.
        sample_temperature: softmax temperature of the sample; 0: the most likely character each time.
        sample_top_k: sample among the k most likely characters only; null: among all.
    """

    def __init__(self, net: torch.nn.Module, vocab: str = "", lr: float = 1e-3, min_lr: float = 1e-4,
                 warmup_steps: int = 100, decay_steps: int | None = None, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.99), grad_clip: float = 1.0, sample_prompt: str = "\n",
                 sample_length: int = 200, sample_temperature: float = 0.8, sample_top_k: int | None = None):
        super().__init__()
        if not vocab:
            raise ConfigError("model.vocab is empty; the command line sets it from the data (data.vocab)")
        for name, value in (("lr", lr), ("min_lr", min_lr), ("weight_decay", weight_decay), ("grad_clip", grad_clip)):
            if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise ConfigError(f"model.{name}={value} must be a finite number >= 0 (lr > 0); use e.g. "
                                  f"--model.{name} {dict(lr=1e-3, min_lr=1e-4, weight_decay=0.1, grad_clip=1.0)[name]}")
        if warmup_steps < 0:
            raise ConfigError(f"model.warmup_steps={warmup_steps} must be >= 0 (0: no warmup)")
        outside = sorted(set(sample_prompt) - set(vocab))
        if outside:
            raise ConfigError(f"model.sample_prompt={sample_prompt!r} has characters outside the vocabulary: "
                              f"{''.join(outside)!r}; use characters of the training text, e.g. "
                              f"--model.sample_prompt {vocab[len(vocab) // 2]!r}")
        self.save_hyperparameters()
        self.automatic_optimization = False  # training_step steps the optimiser itself, once per mini-batch
        self.net, self.vocab = net, vocab
        self.cost = F.cross_entropy if getattr(net, "backend", "hand") == "hand" else torch_F.cross_entropy
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self.test_loss, self.test_acc = MeanMetric(), MeanMetric()

    def setup(self, stage: str) -> None:
        """Refuse, before any step, several processes (the loop never all-reduces its gradients) and float16
        (it does not scale the loss)."""
        if self.trainer.world_size > 1:
            raise ConfigError(f"a language model trains on one process, and this run has {self.trainer.world_size} "
                              "(the chunked loop does not all-reduce its gradients); use --trainer.devices 1")
        if self.trainer.precision == "16-mixed":
            raise ConfigError("trainer.precision='16-mixed' needs loss scaling, which the language model's loop does "
                              "not do; use --trainer.precision bf16-mixed (or 32-true)")
        if self.trainer.precision == "64-true":  # as Classifier: before a checkpoint is restored into the module
            self.double()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(idx)

    # ----------------------------------------------------------------------- training: the hot loop

    def training_step(self, chunk: Chunk, chunk_idx: int) -> None:
        optimizer = cast(LightningOptimizer, self.optimizers()).optimizer  # the raw AdamW: no per-step hooks
        x, y = chunk.x, chunk.y
        if self.trainer.max_steps >= 0:  # stop exactly at max_steps, even inside a chunk
            keep = (self.trainer.max_steps - self.global_step) * chunk.batch_size
            x, y = x[:keep], y[:keep]
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        losses, norms, lr = [], [], self.lr_at(self.global_step)
        for step, (xb, yb) in enumerate(zip(x.split(chunk.batch_size), y.split(chunk.batch_size), strict=True)):
            lr = self.lr_at(self.global_step + step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = self.cost(self.net(xb).flatten(0, 1), yb.flatten(), ignore_index=IGNORE)  # (B T, V) vs (B T,)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(clip_grad_norm(parameters, self.hparams["grad_clip"]))
            optimizer.step()
            losses.append(loss.detach())
        step_losses = torch.stack(losses)
        self._check_divergence(step_losses, lr)  # one host sync a chunk
        self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by(len(losses))
        self.log_dict({"train/loss": step_losses.mean(), "train/grad_norm": torch.stack(norms).mean(),
                       "train/lr": lr, "train/epoch": float(self.current_epoch + 1),
                       "step": float(self.global_step)}, prog_bar=False)

    def lr_at(self, step: int) -> float:
        decay = self.hparams["decay_steps"]
        if decay is None:
            decay = self.trainer.max_steps if self.trainer.max_steps > 0 else \
                (self.trainer.max_epochs or 1) * self.data.steps_per_epoch
        return lr_at(step, self.hparams["lr"], self.hparams["warmup_steps"], decay, self.hparams["min_lr"])

    def _check_divergence(self, losses: torch.Tensor, lr: float) -> None:
        if torch.isfinite(losses.sum()):
            return
        first = int((~torch.isfinite(losses)).nonzero()[0])
        path = newest_checkpoint(self.trainer)
        raise DivergenceError(f"training diverged: the loss became {float(losses[first])} at optimiser step "
                              f"{self.global_step + first + 1}; "
                              + (f"the last good checkpoint is {path}" if path else "no checkpoint was saved before it")
                              + f"; try a smaller learning rate, e.g. --model.lr {self.hparams['lr'] / 10:g}")

    # ----------------------------------------------------------------------- evaluation

    def model_step(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed token loss, scored tokens, exact-match per row) of a chunk."""
        logits = self.net(chunk.x)  # (M, T, V)
        loss = self.cost(logits.flatten(0, 1), chunk.y.flatten(), ignore_index=IGNORE, reduction="sum")
        scored = chunk.y != IGNORE  # (M, T)
        right = ((logits.argmax(-1) == chunk.y) | ~scored).all(1)  # (M,) every scored token right
        return loss, scored.sum(), right.float()

    def validation_step(self, chunk: Chunk, chunk_idx: int) -> None:
        loss, tokens, right = self.model_step(chunk)
        self.val_loss.update(loss / tokens, weight=tokens)
        self.val_acc.update(right)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        metrics: dict[str, torch.Tensor | float] = {"val/loss": loss, "val/perplexity": loss.exp(),
                                                     "step": float(self.global_step)}
        if self.exact_match:
            metrics["val/acc"] = self.val_acc.compute()
        self.log_dict(metrics, prog_bar=False)
        self.val_loss.reset()
        self.val_acc.reset()
        if not self.trainer.sanity_checking:
            self._log_samples()

    def test_step(self, chunk: Chunk, chunk_idx: int) -> None:
        loss, tokens, right = self.model_step(chunk)
        self.test_loss.update(loss / tokens, weight=tokens)
        self.test_acc.update(right)

    def on_test_epoch_end(self) -> None:
        loss = self.test_loss.compute()
        metrics: dict[str, torch.Tensor | float] = {"test/loss": loss, "test/perplexity": loss.exp(),
                                                     "step": float(self.tested_step)}
        if self.exact_match:
            metrics["test/acc"] = self.test_acc.compute()
        self.log_dict(metrics, prog_bar=False)
        self.test_loss.reset()
        self.test_acc.reset()

    @property
    def data(self) -> Any:
        """The trainer's datamodule (a handgrad.text_data.TokenDataModule)."""
        return getattr(self.trainer, "datamodule", None)

    @property
    def exact_match(self) -> bool:
        """Whether the data is a task scored by exact match of the answers (AdditionDataModule)."""
        return bool(getattr(getattr(self._trainer, "datamodule", None), "exact_match", False))

    def samples(self, step: int) -> str:
        """Text generated from the current weights, reproducibly for a given optimiser step."""
        generator = torch.Generator(device=self.device).manual_seed(step)
        encode = {char: i for i, char in enumerate(self.vocab)}
        if self.exact_match:  # greedy answers to the first validation problems
            prompts = self.data.problems("val")[:8]  # e.g. "12+34=640"
            heads = [p[:p.index("=") + 1] for p in prompts]  # "12+34="
            ids = torch.tensor([[encode[c] for c in h] for h in heads], device=self.device)
            out = generate(self.net, ids, len(prompts[0]) - len(heads[0]), temperature=0)
            return "\n".join("".join(self.vocab[int(i)] for i in row) for row in out)
        ids = torch.tensor([[encode[c] for c in self.hparams["sample_prompt"]]], device=self.device)
        out = generate(self.net, ids, self.hparams["sample_length"], self.hparams["sample_temperature"],
                       self.hparams["sample_top_k"], generator)
        return "".join(self.vocab[int(i)] for i in out[0])

    def _log_samples(self) -> None:
        writer = getattr(self.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_text"):  # TensorBoard only
            return
        was_training = self.net.training
        self.net.eval()
        text = self.samples(self.global_step)
        self.net.train(was_training)
        writer.add_text("samples", "    " + text.replace("\n", "\n    "), self.global_step)  # markdown: verbatim

    # ----------------------------------------------------------------------- the optimiser

    def configure_optimizers(self) -> AdamW:
        """AdamW with weight decay on the matrices (dim >= 2: Linear weights, embeddings) and none on the rest."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        return AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.hparams["weight_decay"]},
                      {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                     lr=self.hparams["lr"], betas=tuple(self.hparams["betas"]))
