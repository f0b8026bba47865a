#!/usr/bin/env bash
# One call on a lent GPU machine (issue 12): make the synthetic data, train candidate default
# models side by side within a time budget, calibrate them, check them on the real recordings and
# the synthetic test set, time inference at 1280x720, and pack everything into $OUT.
#
#   OUT=/tmp/out MINUTES=4.5 bash scripts/gpu_session.sh
#
# Settings (environment): OUT (results), WORK (scratch, default /tmp/gpu_work), PAIRS (training
# pairs, 240), MINUTES (training budget per model at most, 4.5), WORKERS (processes, nproc),
# DEVICE (cuda), MODELS (names from the table below), BUDGET (seconds the whole script may take,
# 555), CHECKS (1: calibrate each model and check it on the test set and, where DEFLARE_REALDATA
# names the real recordings, on them; ~200 s of the budget), BENCH (1: time inference at
# 1280x720 with benchmarks/gpu.py; ~160 s), SCENE_FLICKER (share of training, validation and
# calibration pairs whose scene is lit by mains light, 0.3; README), SYNTH_CONFIG (the data
# recipe, configs/synth.yaml), CALIB_PAIRS (32: eight proved too few to set a margin, README),
# TEST_PAIRS (12, the held-out set of seed 202), TRAIN_MIX and VAL_MIX (the training and
# validation data as entries CONFIG:PAIRS:SEED:SCENE_FLICKER; several entries are made one by one
# and linked into one folder by scripts/merge_pairs.py; default: SYNTH_CONFIG alone, PAIRS of
# seed 101 and 4 of seed 303). The calibration, test and night sets are made only with CHECKS.
# With CHECKS, each model is also scored per event (benchmarks/event_scores.py) on NIGHT_PAIRS (8)
# pairs like the kept night recording (configs/night_point_light.yaml, seed 606): a 1280x720
# steady point light, and where the real recordings are there, by its share gap on them
# (benchmarks/share_gap.py). Issue 12's next run trains on textured scenes:
# TRAIN_MIX="configs/synth.yaml:140:105:0.3 configs/synth_sparse_textured.yaml:140:111:0".
# Training gets what the data leave of the budget, less 120 s (the trainers'
# start and final validation, packing) and what CHECKS and BENCH take; a step that would run
# past the budget is cut short. The slim weights (best.pt and last.pt of each model) and metrics
# go to $OUT/weights.tgz.* as soon as training ends, so a late failure loses only checks.
# Without CHECKS, calibrate here afterwards (`deflare calibrate`, minutes on a CPU). Measured on
# an H200 (2026-11-28): 240 pairs made and encoded in 138 s, 4 models side by side at ~7 steps/s
# each, calibration over 100 s per model; 2026-12-04: 280 pairs in 156 s, 3 models. The default
# data recipe is configs/synth.yaml with the seeds of configs/default_model.yaml.
# On the device machine, packages missing from its image travel as wheels in .whl/ (see
# /work/.library/device/README.md; git-ignored, carried): for Python 3.12, manylinux x86_64,
# --no-deps: pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
# typing-inspection==0.4.5 typing_extensions==4.16.0 typer==0.29.2 rich==15.0.0
# shellingham==1.5.4 markdown-it-py==4.3.0 mdurl==0.1.2 Pygments==2.21.0 annotated-doc==0.0.7
# pytorch3dunet==1.9.6. hdf5plugin is replaced by a stand-in there (its wheel is 45 MB, and no
# file of this script is compressed). The real recordings go in .realdata/ (git-ignored,
# carried; DEFLARE_REALDATA=$PWD/.realdata), never into the repository.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
WORK=${WORK:-/tmp/gpu_work}
PAIRS=${PAIRS:-240}
MINUTES=${MINUTES:-4.5}
WORKERS=${WORKERS:-$(nproc)}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-555}
SCENE_FLICKER=${SCENE_FLICKER:-0.3}
SYNTH_CONFIG=${SYNTH_CONFIG:-configs/synth.yaml}
CALIB_PAIRS=${CALIB_PAIRS:-32}
TEST_PAIRS=${TEST_PAIRS:-12}
NIGHT_PAIRS=${NIGHT_PAIRS:-8}
TRAIN_MIX=${TRAIN_MIX:-"$SYNTH_CONFIG:$PAIRS:101:$SCENE_FLICKER"}
VAL_MIX=${VAL_MIX:-"$SYNTH_CONFIG:4:303:$SCENE_FLICKER"}
CHECKS=${CHECKS:-0}
BENCH=${BENCH:-0}
MODELS=${MODELS:-"small-mask wide-mask deep-mask"}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$WORK/session.log") 2>&1
say() { echo "[$(date +%T) +${SECONDS}s] $*"; }

# name -> "f_maps lr batch loss [pooling [crop [init [config]]]]" (loss: the recipe's balanced, or
# mask: a mask model; pooling: xyt, or xy for space alone, README; crop: HxW, 128x128 by default;
# init: a checkpoint to start from, e.g. the U-Net shipped until 2026-12-07, or - for none;
# config: the settings file, configs/default_model.yaml by default). The default candidates are
# sizes a CPU runs, as the shipped default must; E-DeflareNet's size costs ~16x the shipped one per segment
# (and two would not fit the 64 MiB that $OUT brings back). The wide ones pool space alone, so five
# levels reach 108 px: a probe found context at 64-160 px doubling the sparse flare that can
# go at 97% of the rest kept (docs/experiments.md).
LONG_CONTEXT=configs/long_context.yaml
UNET_BEFORE=candidates/unet_mask_2026-11-29.calibrated.pt  # the default model until 2026-12-07
declare -A RECIPE=(
    [small]="16,32,64 0.0007 16 balanced"           # the shipped size: fast on CPU
    [deep]="16,32,64,128 0.0007 16 balanced"        # one more level: twice the reach
    [deep-mask]="16,32,64,128 0.0007 16 mask"
    [edeflare]="32,64,128,256 0.0003 16 balanced"   # E-DeflareNet's size: GPU only
    [small-mask]="16,32,64 0.0007 16 mask"          # classifies events (slow to learn on CPU)
    [edeflare-mask]="32,64,128,256 0.0003 16 mask"
    [wide-mask]="16,32,64,64,64 0.0007 16 mask xy"  # 5 levels on 8 bins: 108 px, 1.5 M
    [wide-mask-big]="16,32,64,128,128 0.0005 16 mask xy"  # the same reach, 4.0 M: 32 MB of weights
    # the wide model on crops that hold its reach (a 128 px crop cuts most of a 108 px context off)
    [wide-mask-256]="16,32,64,64,64 0.0007 8 mask xy 256x256"
    # the U-Net shipped until 2026-12-07 fine-tuned on the training mix
    # (as configs/default_model_sparse.yaml does)
    [shipped-ft]="16,32,64 0.0003 16 mask xyt 128x128 $UNET_BEFORE"
    # longer temporal context: 50 ms segments of 20 bins (configs/long_context.yaml), 2.5x the
    # cost of a step; a probe found it helping on the night recipe, not from the training one
    # (docs/experiments.md, 2026-12-06). long-ft starts from that U-Net's weights.
    [long-ft]="16,32,64 0.0003 16 mask xyt 128x128 $UNET_BEFORE $LONG_CONTEXT"
    [long-mask]="16,32,64 0.0007 16 mask xyt 128x128 - $LONG_CONTEXT"
    # input divided by its whole frame's event density, no GroupNorm (configs/frame_norm.yaml):
    # a probe found local densities over the frame's keeping 94.5-99.8% of six real scenes at
    # the night pairs' threshold, against 33-97% undivided (docs/experiments.md, 2026-12-06)
    [norm-mask]="16,32,64 0.0007 16 mask xyt 128x128 - configs/frame_norm.yaml"
    [norm-mask-big]="32,64,128,256 0.0003 16 mask xyt 128x128 - configs/frame_norm.yaml"
)
# the settings file of candidate $1 (its recipe's eighth field, default_model.yaml without one)
config_of() { local config; read -r _ _ _ _ _ _ _ config <<< "${RECIPE[$1]}"
    echo "${config:-configs/default_model.yaml}"; }

if [ -d .whl ] && ! $PY -c "import pydantic, pytorch3dunet" 2>/dev/null; then
    say "installing carried wheels"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    if ! $PY -c "import hdf5plugin" 2>/dev/null; then
        cat > /tmp/site/hdf5plugin.py <<'EOF'
"""Stand-in for hdf5plugin on the device machine: no file there is compressed."""
def _missing(*args, **kwargs):
    raise RuntimeError("hdf5plugin is not installed on this machine")
Blosc = Zstd = _missing
Blosc.SHUFFLE = 1
EOF
    fi
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
DEFLARE="$PY -m deflare_cli"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null

say "synthesising the training mix ($TRAIN_MIX) and the validation mix ($VAL_MIX)"
# the test set stays the recipe's, comparable with the README's figures; the calibration set gets
# the scenes lit by mains light (the shipped model took a real lamp-lit scene's edges for flare
# when trained longer without them)
synth() { local flicker=${5:-$SCENE_FLICKER} config=${6:-$SYNTH_CONFIG}
    [ "$1" = test ] && flicker=0
    [ "$1" = night ] && { flicker=0; config=configs/night_point_light.yaml; }
    $DEFLARE synth "$WORK/$1" --config "$config" --num-files "$2" --seed "$3" \
    --workers "$4" --scene-flicker "$flicker" --overwrite > "$WORK/synth_${1//\//_}.log" 2>&1; }
# make_mix NAME WORKERS ENTRY...: each CONFIG:PAIRS:SEED:FLICKER entry into $WORK/NAME_parts/K,
# linked into $WORK/NAME (one entry: made there directly)
make_mix() { local name=$1 workers=$2; shift 2
    if [ $# = 1 ]; then IFS=: read -r config pairs seed flicker <<< "$1"
        synth "$name" "$pairs" "$seed" "$workers" "$flicker" "$config"; return; fi
    local k=0 parts=(); rm -rf "$WORK/$name" "$WORK/${name}_parts"
    for entry in "$@"; do IFS=: read -r config pairs seed flicker <<< "$entry"; k=$((k + 1))
        synth "${name}_parts/$k" "$pairs" "$seed" "$workers" "$flicker" "$config" || return 1
        parts+=("$WORK/${name}_parts/$k"); done
    $PY scripts/merge_pairs.py "$WORK/$name" "${parts[@]}"; }
# (bare `wait` would also wait for the tee above: wait for the jobs by their PIDs)
jobs=(); make_mix val 2 $VAL_MIX & jobs+=($!)
if [ "$CHECKS" = 1 ]; then
    for set in "calib $CALIB_PAIRS 404 4" "test $TEST_PAIRS 202 4" "night $NIGHT_PAIRS 606 2"; do
        synth $set & jobs+=($!); done
fi
synth_failed() { say "synth failed"; tail -n 3 "$WORK"/synth_*.log; exit 1; }
make_mix train "$WORKERS" $TRAIN_MIX || synth_failed
wait "${jobs[@]}" || synth_failed
say "filling the voxel cache"
# once per settings file the models use (its codec keys the cache's entries)
for config in $(for name in $MODELS; do config_of "$name"; done | sort -u); do
    $PY scripts/prefill_cache.py "$config" "$WORK/train" "$WORK/val" "$WORK/cache" "$WORKERS" \
        || exit 1
done

# seconds left before the budget's end, less $1 (at least 1: `timeout 0` would not time out)
left() { local t=$((BUDGET - SECONDS - ${1:-0})); echo $((t < 1 ? 1 : t)); }
MINUTES=$($PY -c "import sys; print(round(min(float(sys.argv[1]), int(sys.argv[2]) / 60), 2))" \
    "$MINUTES" "$(left $((120 + 200 * CHECKS + 160 * BENCH)))")
say "training: $MODELS, $MINUTES min each, side by side"
jobs=(); for name in $MODELS; do
    read -r f_maps lr batch loss pooling crop init _ <<< "${RECIPE[$name]}"
    [ "$init" = - ] && init=
    $DEFLARE train --run-dir "$WORK/runs/$name" --data-dir "$WORK/train" --val-dir "$WORK/val" \
        --config "$(config_of "$name")" --f-maps "$f_maps" --lr "$lr" \
        --batch-size "$batch" --loss "$loss" --pooling "${pooling:-xyt}" --crop "${crop:-128x128}" \
        ${init:+--init-from "$init"} \
        --epochs 10000 --max-minutes "$MINUTES" --val-every 400 --device "$DEVICE" \
        --num-workers 3 --cache-dir "$WORK/cache" > "$WORK/train_$name.log" 2>&1 &
    jobs+=($!)
done
wait "${jobs[@]}"
say "trained"; for name in $MODELS; do tail -n 2 "$WORK/train_$name.log"; done
mkdir -p "$WORK/weights"
for name in $MODELS; do cp "$WORK/runs/$name/metrics.csv" "$WORK/weights/${name}_metrics.csv"; done
$PY - "$WORK" $MODELS <<'PYTHON'
import sys
from pathlib import Path
from deflare_cli.checkpoint import export_checkpoint
work = Path(sys.argv[1])
for name in sys.argv[2:]:
    for which in ("best", "last"):
        source = work / "runs" / name / f"{which}.pt"
        export_checkpoint(source, work / "weights" / f"{name}_{which}.pt")
PYTHON
(cd "$WORK" && tar czf - weights | split -b 15M - "$OUT/weights.tgz.")
say "weights packed"

[ "$CHECKS" = 1 ] && say "calibrating, checking on the test set and the real recordings"
# every step of the checks ends 100 s before the budget's end; the GPU timing gets what is left
check() {
    local name=$1 model="$WORK/$1.pt"
    timeout "$(left 100)" $DEFLARE calibrate "$WORK/runs/$name/best.pt" "$WORK/calib" \
        -o "$model" --device "$DEVICE" > "$WORK/calibrate_$name.log" 2>&1 \
        || { say "calibrating $name failed or was cut short"; return 1; }
    timeout "$(left 100)" $DEFLARE evaluate --data-dir "$WORK/test" --methods raw,model \
        --checkpoint "$model" --device "$DEVICE" -o "$WORK/evaluate_$name" \
        > "$WORK/evaluate_$name.log" 2>&1 || say "evaluating $name failed or was cut short"
    timeout "$(left 100)" $PY benchmarks/event_scores.py --device "$DEVICE" "$model" "$WORK/night" \
        > "$WORK/night_scores_$name.md" 2> "$WORK/night_scores_$name.log" \
        || say "scoring $name on the night point light pairs failed or was cut short"
    if [ -d "${DEFLARE_REALDATA:-/nonexistent}" ]; then
        timeout "$(left 100)" $PY benchmarks/realdata.py --checkpoint "$model" \
            --device "$DEVICE" --output "$WORK/realdata_$name.md" > "$WORK/realdata_$name.log" \
            2>&1 || say "real recordings with $name failed or were cut short"
        # how the model scores real scenes against the night pairs' threshold (README, "Known
        # limitations"): the share gap that texture in the training data should close
        timeout "$(left 100)" $PY benchmarks/share_gap.py --device "$DEVICE" "$model" \
            "$WORK/night" "$DEFLARE_REALDATA"/{davis346_emlb_demo,dvxplorer_indoor_person}.h5 \
            "$DEFLARE_REALDATA"/{evt3_dim_indoor,davis346_flicker_lamps}.h5 \
            > "$WORK/share_gap_$name.md" 2> "$WORK/share_gap_$name.log" \
            || say "the share gap of $name failed or was cut short"
    fi
}
if [ "$CHECKS" = 1 ]; then
    jobs=(); for name in $MODELS; do check "$name" & jobs+=($!); done
    wait "${jobs[@]}"
    for name in $MODELS; do
        echo "$name: $(grep -h -i margin "$WORK/calibrate_$name.log" | tail -n 1)"
    done
fi

if [ "$BENCH" = 1 ] && [ "$(left 40)" -gt 1 ] && [ "$DEVICE" = cuda ]; then
    say "timing inference at 1280x720"
    timeout "$(left 15)" $PY benchmarks/gpu.py --output "$WORK/gpu_bench.md" \
        > "$WORK/gpu_bench.log" 2>&1
    grep "^|" "$WORK/gpu_bench.log"
fi

say "packing"
cd "$WORK" && tar czf - --exclude='runs/*/voxel_cache' --exclude='runs/*/*.pt' \
    --exclude='runs/prefill' ./*.log ./*.md ./evaluate_* runs 2>/dev/null \
    | split -b 15M - "$OUT/session.tgz."
ls -la "$OUT"
say "done"
