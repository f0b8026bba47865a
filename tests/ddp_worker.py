"""Run by test_train.py under torchrun: train briefly, then record this rank's weights and the
checkpoints it wrote."""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

import torch

from deflare_cli.devices import start_cluster
from deflare_cli.settings import DataSettings, ModelSettings, RuntimeSettings, TrainSettings
from deflare_cli.train import trainer as train_module

faulthandler.enable()  # a rank that aborts (SIGABRT from C++) shows where its threads were
data_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ["RANK"])
saves = out_dir / f"saves_rank{rank}.txt"
saves.write_text("")
original_save = train_module.save_checkpoint


def recording_save(path, checkpoint):
    with open(saves, "a") as handle:
        handle.write(f"{Path(path).name}\n")
    original_save(path, checkpoint)


train_module.save_checkpoint = recording_save
settings = TrainSettings(
    run_dir=out_dir / "run",
    data=DataSettings(
        data_dir=data_dir, crop=(16, 16), val_fraction=0, cache_dir=out_dir / "cache"
    ),
    model=ModelSettings(f_maps=(8, 16)),
    epochs=1,
    batch_size=1,
    lr=1e-3,
    runtime=RuntimeSettings(device="cpu"),
)
cluster = start_cluster("cpu")
trainer = train_module.Trainer(settings, cluster)
trainer.run()
torch.save(trainer.model.state_dict(), out_dir / f"weights_rank{rank}.pt")
torch.distributed.destroy_process_group()
