#!/usr/bin/env bash
# The accuracy study behind docs/results.md: the `cpu` recipe once per backend on all 60,000
# training images (the only runs whose test accuracy is reported; the recipe was chosen on
# validation accuracy first), then ablations of the seed's choices judged on validation accuracy.
# Run dirs go to $RUNS (default ./runs/accuracy); docs/results.toml lists which run is which, and
# `python -m studies.results docs/results.toml` rebuilds docs/results.md from them.
#
#   scripts/accuracy_study.sh final tensorflow      # one final run (alone on the machine: it is timed)
#   scripts/accuracy_study.sh ablations             # head-stage ablations (tensorflow)
#   scripts/accuracy_study.sh augmentation          # augmentation on/off at a reduced budget
#   scripts/accuracy_study.sh depth                 # the seed's unfreeze depth (last 16 layers)
#   scripts/accuracy_study.sh epochs                # 2 fine-tune epochs instead of 3
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/accuracy}
SHARED=${SHARED:-../shared}
COMMON=(--preset cpu --data-dir "$SHARED/data/fashion-mnist"
        --weights "$SHARED/weights/resnet50_imagenet_notop.weights.h5" --runs-dir "$RUNS" --verbose 2)

train() {  # train NAME [flags...]
  local name=$1; shift
  KERAS_BACKEND=${BACKEND:-tensorflow} "$PY" -m tlkit.train "${COMMON[@]}" --name "$name" "$@"
}

case ${1:-} in
  final)
    # The validation images join the training set; early stopping has nothing to watch then (no
    # full-data run of the recipe ever stopped early: docs/results.md).
    BACKEND=$2 train "final-cpu-$2" --validation-split 0 --head-early-stopping 0 --finetune-early-stopping 0 ;;
  ablations)
    # Head-stage choices, on the cached features of the full training set (no fine-tuning).
    train abl-head-baseline --finetune-epochs 0
    train abl-head-dropout0 --finetune-epochs 0 --dropout 0
    train abl-head-dropout05 --finetune-epochs 0 --dropout 0.5
    train abl-head-l2-0 --finetune-epochs 0 --l2 0
    train abl-head-constant-lr --finetune-epochs 0 --head-schedule constant
    train abl-head-exponential-lr --finetune-epochs 0 --head-schedule exponential --head-decay-rate 0.9
    train abl-head-no-smoothing --finetune-epochs 0 --label-smoothing 0
    ;;
  augmentation)
    # Augmentation (the seed's flip/rotation/zoom) needs the full graph every step (no caches), so
    # it is compared on a reduced budget: 10,000 training images (1,000 held out), head stage
    # 3 epochs (the 2,000-step floor off), with and without.
    train abl-aug-off --train-limit 10000 --head-epochs 3 --finetune-epochs 0
    train abl-aug-on --train-limit 10000 --head-epochs 3 --finetune-epochs 0 \
      --aug-flip --aug-rotation 0.1 --aug-zoom 0.1
    ;;
  depth)
    # Unfreeze depth: the recipe's conv5 is its tensorflow run on the 54,000/6,000 split
    # (docs/runs/*-candidate-cpu-tensorflow-*) and none is abl-head-baseline; this adds the seed's
    # last 16 layers.
    train abl-unfreeze-16 --unfreeze 16
    ;;
  epochs)
    # Fine-tune epochs: the recipe's 3 against 2 (a third less fine-tuning time, the stage that takes
    # most of a run on a CPU), both with the recipe's cosine schedule over the stage.
    train abl-finetune-2-epochs --finetune-epochs 2
    ;;
  *)
    echo "usage: $0 final BACKEND | ablations | augmentation | depth | epochs" >&2; exit 2 ;;
esac
