#!/usr/bin/env bash
# One prepared GPU run (issue 15): the `seed` then the `best` recipe on one GPU machine, within a
# time budget, from a pack of everything the bare machine lacks. Details: benchmarks/gpu_run.py.
#
# Here, once before the device call (3–10 min on 2 cores; needs ../shared and the package index):
#   .venv/bin/python -m benchmarks.gpu_pack pack          # writes .gpu-pack/ (git-ignored), checks 64 MiB
# Then the device tool's run, with timeout_s 600:
#   command: bash benchmarks/gpu_run.sh
#   carry:   [".gpu-pack"]
# What comes back in $OUT: summary.json (phases' wall times, nvidia-smi, versions, per recipe the
# run's state, where it stopped, test accuracy, images/s per stage), runs.tar.gz (the run
# directories without model.keras and checkpoints), gpu_run.log, nvidia-smi.txt.
#
# Here, on CPU, the same script end to end with a tiny configuration and a synthetic pack
# (or --pack .gpu-pack for the real one); only the GPU itself is left untested:
#   benchmarks/gpu_run.sh --dry-run [--out DIR] [--work DIR]      (or DRY_RUN=1 benchmarks/gpu_run.sh)
# Other options: benchmarks/gpu_run.sh --help (time budget, recipes, backends, extra tlkit.train flags).
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
if [[ "${DRY_RUN:-0}" == 1 && " $* " != *" --dry-run "* ]]; then
  args+=(--dry-run)
fi
if [[ -z "${PYTHON:-}" ]]; then
  # The GPU image's python3 holds jax, torch, numpy and h5py; here the project's venv.
  if [[ " ${args[*]:-} " == *" --dry-run "* && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" -m benchmarks.gpu_run "${args[@]}"
