"""Fill a voxel cache before several trainings share it (scripts/gpu_session.sh).

python scripts/prefill_cache.py CONFIG DATA_DIR VAL_DIR CACHE_DIR WORKERS
"""

import sys
from pathlib import Path

from deflare_cli.settings import TrainSettings, load_settings
from deflare_cli.train.data import load_datasets

if __name__ == "__main__":  # the encoding processes are spawned: they import this file
    config, data_dir, val_dir, cache_dir, workers = sys.argv[1:]
    data = {"data_dir": data_dir, "val_dir": val_dir, "cache_dir": cache_dir,
            "num_workers": int(workers)}  # fmt: skip
    settings = load_settings(TrainSettings, Path(config), {"run_dir": cache_dir, "data": data})
    print(len(load_datasets(settings).train), "training segments")
