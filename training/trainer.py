"""The training loop: plain PyTorch, DistributedDataParallel under torchrun, AMP, resume.

The recipe's batch size is the total over all processes (:mod:`training.distributed`), so a
recipe gives the same optimisation on 1 GPU or 8.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model import build_model
from model.runtime import cpu_has_bf16
from training import checkpoint as ckpt
from training.config import TrainConfig, to_dict
from training.data import EpochSampler, data_loader, network_inputs, train_dataset, val_dataset
from training.distributed import autocast_dtype, init_distributed, pick_device, seed_everything
from training.ema import ModelEma
from training.evaluation import PRIMARY_METRIC, evaluate
from training.logger import MetricsLogger, plot_curves
from training.predict import predict
from training.progress import StopSignal, TrainProgress, format_metrics
from training.schedule import build_scheduler


class NonFiniteLoss(RuntimeError):
    pass


def heatmap_loss(heatmaps: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MMPose's ``JointsMSELoss(use_target_weight=True)``: MSE of weighted heatmaps, mean over all."""
    w = weight[:, :, None, None]
    return torch.mean((heatmaps.float() * w - target * w) ** 2)


class Trainer:
    """Builds everything from a recipe; :meth:`fit` trains, validates and checkpoints."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg = cfg
        self.device = pick_device(cfg.run.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dist = init_distributed(self.device)
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.out_dir = cfg.out_dir
        if cfg.optim.batch_size % self.dist.world:
            raise ValueError(f"optim.batch_size {cfg.optim.batch_size} is not divisible by {self.dist.world} processes")
        self.batch_size = cfg.optim.batch_size // self.dist.world

        self.train_set = train_dataset(cfg)
        self.val_set = val_dataset(cfg)
        self.keypoint_set = self.train_set.instances.keypoint_set
        self.metric = PRIMARY_METRIC[cfg.data.dataset]

        self.model = build_model(cfg.model.name, self.keypoint_set.num_keypoints).to(self.device)
        if cfg.model.init_from and not resume:
            ckpt.load_weights(self.model, cfg.model.init_from, cfg.model.name)
            self.print(f"network weights from {cfg.model.init_from}")
        if cfg.run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = ModelEma(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.iters_per_epoch = math.ceil(math.ceil(len(self.train_set) / self.dist.world) / self.batch_size)
        self.scheduler = build_scheduler(self.optimizer, self.iters_per_epoch, cfg.optim)
        self.amp_dtype = autocast_dtype(cfg, self.device)
        if self.device.type == "cpu" and self.amp_dtype is not None and not cpu_has_bf16():
            self.print("run.cpu_precision=bf16 on a CPU without AVX-512 BF16 or AMX: emulated, likely slower than fp32")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.epoch = 0  # the epoch in progress (0-based)
        self.batch_in_epoch = 0  # batches of it already done
        self.step = 0  # optimiser steps since the start
        self.best: dict[str, Any] = {}
        self.val_metrics: dict[str, float] = {}
        self.skipped_images: set[str] = set()
        self.stop = StopSignal(self.print)  # SIGTERM/SIGINT: checkpoint at the next step, then stop
        self.resumed = resume
        if resume:
            self.load(self.out_dir / "last.pt")

        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.run.compile:
            # Static shapes: each epoch's last, smaller batch gets a graph of its own, rather than
            # dynamo recompiling the full batches' graph with a symbolic batch size.
            self.net = torch.compile(self.net, dynamic=False)

    # ------------------------------------------------------------------ checkpoints

    @property
    def eval_model(self) -> nn.Module:
        """The network that is validated, checkpointed as ``"model"`` and so exported."""
        return self.ema.module if self.ema else self.model

    def state(self) -> dict[str, Any]:
        # With EMA, "model" holds the average (what eval and export read) and "ema" the raw weights.
        ema = {**self.ema.state_dict(), "raw_model": self.model.state_dict()} if self.ema else None
        return {
            "config": to_dict(self.cfg),
            "model": self.eval_model.state_dict(),
            "ema": ema,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "rng": ckpt.rng_state(),
            "best": self.best,
            "val_metrics": self.val_metrics,
            "keypoint_set": self.keypoint_set.name,
            "world_size": self.dist.world,
        }

    def save(self) -> Path | None:
        if not self.dist.main:
            return None
        return ckpt.save_atomic(self.state(), self.out_dir / "last.pt")

    def load(self, path: Path) -> None:
        state = ckpt.load(path, self.device)
        if "optimizer" not in state:
            raise ValueError(
                f"--resume: {path} holds network weights only (hevitpose average); "
                f"fine-tune from it with model.init_from={path} and another run.out_dir"
            )
        ema = state.get("ema")
        self.model.load_state_dict(ema["raw_model"] if ema else state["model"])
        if self.ema and ema:
            self.ema.load_state_dict(state["model"], ema)
        elif self.ema:  # optim.ema_decay set on resume: the average starts from the weights resumed
            self.ema.module.load_state_dict(self.model.state_dict())
        elif ema:
            self.print(f"{path} holds a weight average; this run has optim.ema_decay=0 and goes on without it")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        if state.get("world_size", 1) != self.dist.world:
            self.print(
                f"warning: {path} was written by {state['world_size']} process(es), this run has {self.dist.world}; "
                "the batches of the interrupted epoch will not be exactly those of an uninterrupted run"
            )
        self.best, self.val_metrics = state["best"], state["val_metrics"]
        ckpt.set_rng_state(state["rng"])
        self.print(f"resumed from {path}: epoch {self.epoch + 1}, batch {self.batch_in_epoch}, step {self.step}")

    # ------------------------------------------------------------------ helpers

    def print(self, *args: Any) -> None:
        if self.dist.main:
            print(*args, file=sys.stderr, flush=True)

    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics to every rank, as MMCV's DistEvalHook(broadcast_bn_buffer=True).

        DDP broadcasts buffers at the start of each forward, so after the last step of an
        epoch each rank holds the statistics of its own last batch; validation and the
        checkpoint then use rank 0's, on every rank.
        """
        self.dist.broadcast_buffers(self.model)
        if self.ema:
            self.dist.broadcast_buffers(self.ema.module)

    def count_skipped(self, batch: dict, dataset) -> None:
        bad = (~batch["valid"]).nonzero().flatten().tolist()
        for i in bad:
            self.skipped_images.add(dataset.instances.image_paths[int(batch["index"][i])])

    # ------------------------------------------------------------------ validation

    def validate(self) -> dict[str, float]:
        cfg = self.cfg
        indices = list(range(self.dist.rank, len(self.val_set), self.dist.world))
        loader = data_loader(cfg, self.val_set, indices, cfg.eval.batch_size, self.device)
        pred = predict(
            self.eval_model,
            loader,
            self.val_set.codec,
            self.keypoint_set.flip_index if cfg.eval.flip_test else None,
            self.device,
            self.amp_dtype,
            cfg.run.channels_last,
        )
        self.model.train()
        if self.dist.enabled:
            parts = self.dist.gather(pred)
            pred = {key: np.concatenate([p[key] for p in parts]) for key in pred}
        for i in np.flatnonzero(~pred["valid"]):
            self.skipped_images.add(self.val_set.instances.image_paths[int(pred["index"][i])])
        metrics = evaluate(cfg, self.val_set, pred) if self.dist.main else {}
        return self.dist.broadcast(metrics)

    # ------------------------------------------------------------------ training

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
            if not self.resumed:
                (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run, fresh records
        logger = MetricsLogger(self.out_dir, cfg.run.tensorboard) if self.dist.main else None
        total_steps = cfg.optim.epochs * self.iters_per_epoch
        if cfg.run.max_steps:
            total_steps = min(total_steps, cfg.run.max_steps)
        self.print(
            f"{cfg.name}: {cfg.model.name} on {len(self.train_set)} train / {len(self.val_set)} val people, "
            f"{self.dist.world} process(es) on {self.device}, batch {self.batch_size}/process, "
            f"{self.iters_per_epoch} iterations/epoch"
        )
        if self.train_set.images is not None:
            cache = self.train_set.images
            self.print(f"{len(cache)} training images decoded once into {cache.path} ({cache.nbytes / 2**30:.2f} GiB)")
        progress = TrainProgress(cfg.run, self.dist, self.device, self.stop, logger, total_steps, self.step)
        stopped = False
        if cfg.run.max_steps and self.step >= cfg.run.max_steps:
            self.print(f"already at step {self.step} >= run.max_steps {cfg.run.max_steps}; nothing to do")
            return {"step": self.step, "epoch": self.epoch, "val": self.val_metrics, "best": self.best, "stopped": True}
        self.train_sampler = EpochSampler(len(self.train_set), self.dist.world, self.dist.rank, cfg.run.seed)
        self.train_loader = data_loader(
            cfg, self.train_set, self.train_sampler, self.batch_size, self.device, persistent=True
        )
        self.stop.install()
        try:
            while self.epoch < cfg.optim.epochs and not stopped:
                stopped = self.train_epoch(progress)
                if stopped:
                    break
                self.sync_buffers()
                last = self.epoch == cfg.optim.epochs - 1
                improved = False
                if (self.epoch + 1) % cfg.eval.interval == 0 or last:
                    self.val_metrics = self.validate()
                    self.print(f"epoch {self.epoch + 1} validation: {format_metrics(self.val_metrics)}")
                    if logger:
                        logger.log("val", self.step, self.epoch + 1, self.val_metrics)
                    value = self.val_metrics.get(self.metric, float("nan"))
                    improved = math.isfinite(value) and (not self.best or value > self.best["value"])
                    if improved:
                        self.best = {"metric": self.metric, "value": value, "epoch": self.epoch + 1}
                self.epoch += 1
                self.batch_in_epoch = 0
                path = self.save()
                if improved and path is not None:
                    ckpt.copy_atomic(path, self.out_dir / "best.pt")
        finally:
            self.train_loader = None  # shuts the persistent workers down
            self.stop.restore()
            if logger:
                logger.close()
        if self.dist.enabled:
            self.skipped_images = set().union(*self.dist.gather(self.skipped_images))
        if self.skipped_images:
            self.print(
                f"{len(self.skipped_images)} image(s) could not be read and their people were skipped: "
                + ", ".join(sorted(self.skipped_images)[:10])
                + (" ..." if len(self.skipped_images) > 10 else "")
            )
        if self.dist.main and cfg.run.plot and not stopped:
            plot_curves(self.out_dir / "metrics.jsonl", self.out_dir / "curves.png", self.metric)
        return {"step": self.step, "epoch": self.epoch, "val": self.val_metrics, "best": self.best, "stopped": stopped}

    def train_epoch(self, progress: TrainProgress) -> bool:
        """One epoch from ``batch_in_epoch`` on; True when the run stopped in it (``run.max_steps``,
        ``run.time_limit_s`` or a stop signal)."""
        cfg = self.cfg
        self.train_set.set_epoch(self.epoch)
        self.train_sampler.set_epoch(self.epoch, self.batch_in_epoch * self.batch_size)
        loader = self.train_loader
        self.model.train()
        progress.begin_epoch(f"epoch {self.epoch + 1}/{cfg.optim.epochs}", self.iters_per_epoch, self.batch_in_epoch)
        amp = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        for batch in loader:
            inputs = network_inputs(batch["input"], self.device, cfg.run.channels_last)
            target = batch["target"].to(self.device, non_blocking=True)
            weight = batch["target_weight"].to(self.device, non_blocking=True)
            if not bool(batch["valid"].all()):
                self.count_skipped(batch, self.train_set)
            with amp:
                heatmaps = self.net(inputs)
            loss = heatmap_loss(heatmaps, target, weight)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema:
                self.ema.update(self.model)
            self.step += 1
            self.batch_in_epoch += 1
            progress.add(loss, inputs.shape[0] * self.dist.world)
            done = bool(cfg.run.max_steps and self.step >= cfg.run.max_steps)
            out_of_time = progress.out_of_time()
            end_of_epoch = self.batch_in_epoch >= self.iters_per_epoch
            if progress.due(done or end_of_epoch, out_of_time):
                mean_loss, asked = progress.agree(out_of_time)
                if asked and not done:
                    done, reason = True, asked
                else:
                    reason = "run.max_steps"
                if not math.isfinite(mean_loss):
                    last = self.out_dir / "last.pt"
                    kept = (
                        f"the last good checkpoint is kept: {last}"
                        if last.is_file()
                        else "no checkpoint had been written yet"
                    )
                    raise NonFiniteLoss(
                        f"loss became {mean_loss} between steps {self.step - progress.steps + 1} and {self.step} "
                        f"(epoch {self.epoch + 1}); stopping, {kept}. Lower optim.lr or check the data."
                    )
                progress.record(self.step, self.epoch + 1, mean_loss, lr)
            progress.advance()
            if done:
                progress.end_epoch()
                # At the end of an epoch this saves batch_in_epoch == iters_per_epoch: a resumed
                # run then finds no batches left, validates and moves on, as this one would have.
                self.sync_buffers()
                self.save()
                self.print(f"stopped at step {self.step} ({reason}); resume with --resume")
                return True
        progress.end_epoch()
        return False
