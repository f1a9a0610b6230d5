"""Run under torchrun by test_training_runner: trains a few steps, saves this rank's weights."""

import sys
from pathlib import Path

import torch

from training.config import load_config
from training.trainer import Trainer


def main(config: str, out: str) -> None:
    trainer = Trainer(load_config(config))
    assert trainer.dist.world == 2, trainer.dist
    result = trainer.fit()
    rank = trainer.dist.rank
    torch.save(
        {
            "model": trainer.model.state_dict(),
            "step": result["step"],
            "val": result["val"],
            "batch": trainer.batch_size,
        },
        Path(out) / f"rank{rank}.pt",
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
