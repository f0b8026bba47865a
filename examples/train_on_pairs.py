"""Build and train a model on a folder of flare/clean pairs, from Python.

    python examples/train_on_pairs.py DATA_DIR RUN_DIR [--steps 20] [--f-maps 8,16]

DATA_DIR holds background_with_flare_events/ and background_with_light_events/ (as written by
`deflare synth`). Prints the training loss and where the checkpoint went.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deflare_cli.settings import DataSettings, ModelSettings, TrainSettings, parse_int_list
from deflare_cli.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--f-maps", default="16,32,64")
    parser.add_argument("--crop", type=int, default=64)
    args = parser.parse_args()
    settings = TrainSettings(
        run_dir=args.run_dir,
        data=DataSettings(data_dir=args.data_dir, crop=(args.crop, args.crop), val_fraction=0),
        model=ModelSettings(f_maps=parse_int_list(args.f_maps)),
        epochs=1000,  # max_steps ends the run
        max_steps=args.steps,
        batch_size=2,
        lr=1e-3,
    )

    def report(stage: str, done: int, total: int, detail: str = "") -> None:
        if stage == "training" and (done % 5 == 0 or done == total):
            print(f"step {done}/{total} {detail}")

    result = train(settings, report)
    print(f"trained {result.steps} steps, {result.parameters:,} parameters")
    print(f"checkpoint: {result.last_checkpoint}")


if __name__ == "__main__":
    main()
