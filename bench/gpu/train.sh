#!/usr/bin/env bash
# Train the 6 mm testbed (bench/train_fastest.py's dataset 998: the official Dataset298 architecture on the two
# reference CTs) on the lent GPU, in ONE call, and send the weights back (issue: retrain and evaluate).
#
#   here:           bash bench/gpu/prepare.sh --train     (.whl as for run.sh, plus .gpu_input/train/)
#   on the device:  bash bench/gpu/train.sh               (carry .whl and .gpu_input)
#   here, after:    python3 bench/gpu/trained_weights.py restore FILES_AT RESULT_FOLDER, then
#                   totalseg_import_weights -i RESULT_FOLDER --task total_fastest_bench (see bench/README.md)
#   dry run here:   bash bench/gpu/train.sh --dry-run     (CPU, bench/.venv-gpu-dry, 1 epoch of 2 iterations)
#
# Knobs: BENCH_TRAIN_EPOCHS (default 100), BENCH_TRAIN_ITERATIONS (per epoch, default 50), BENCH_TRAIN_CAP_S
# (timeout of the training, default 420 s: the weights of the last finished epoch come back if it is reached).
# Back in $OUT (else bench/work/gpu-train/): weights_part*.bin (fp16), result_meta.tar.gz, train_log.txt.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup gpu-train "$@"

main() {
    local PY DEVICE EPOCHS ITERS CAP BASE
    if [ "$MODE" = gpu ]; then
        PY="$(command -v python3)"; DEVICE=cuda; BASE=/tmp
        EPOCHS="${BENCH_TRAIN_EPOCHS:-100}"; ITERS="${BENCH_TRAIN_ITERATIONS:-50}"; CAP="${BENCH_TRAIN_CAP_S:-420}"
    else
        PY="$REPO/bench/.venv-gpu-dry/bin/python"; DEVICE=cpu; BASE=/tmp/gpu-train-dry
        EPOCHS=1; ITERS=2; CAP=1200
        [ -x "$PY" ] || { echo "train.sh --dry-run: $PY missing: run bash bench/gpu/prepare.sh --dry-run"; return 1; }
    fi
    echo "=== train.sh ($MODE): $(date '+%F %T'), $(nproc) CPUs, $EPOCHS epochs x $ITERS iterations, cap $CAP s"
    [ -d .gpu_input/train/nnUNet_preprocessed ] || { echo "no .gpu_input/train: run bash bench/gpu/prepare.sh --train"; return 1; }
    command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    local SITE="$BASE/site" SITE_OURS="$BASE/site-ours" WORK="$BASE/train_work" wheels=()
    rm -rf "$SITE" "$SITE_OURS" "$WORK"
    mapfile -t wheels < <(shared_wheels)
    pip_target "$PY" "$SITE" "${wheels[@]}" && pip_target "$PY" "$SITE_OURS" .whl/ours/*.whl \
        || { echo "installing the wheels FAILED"; return 1; }
    mkdir -p "$WORK" && cp -r .gpu_input/train/nnUNet_raw .gpu_input/train/nnUNet_preprocessed "$WORK/"
    # SimpleITK stub: nnU-Net imports it at module level; training reads the preprocessed .b2nd files only.
    local PP="$REPO/bench/gpu/stubs/official:$SITE_OURS:$SITE"
    echo "=== [$(( $(date +%s) - START )) s] training on $DEVICE"
    # nnUNet_compile=f: torch.compile would spend minutes of the lease compiling.
    PYTHONPATH="$PP" nnUNet_compile=f timeout -k 20 "$CAP" "$PY" -m totalseg.cli.train -w "$WORK" -d 998 \
        -tr nnUNetTrainerShortNoDA --device "$DEVICE" --epochs "$EPOCHS" --iterations "$ITERS" --workers 4 \
        --skip_preprocess
    local rc=$?
    echo "=== [$(( $(date +%s) - START )) s] training exit $rc (124: stopped at the cap; the last epoch's checkpoint is sent)"
    local RESULT="$WORK/nnUNet_results/Dataset998_TotalFastestBench/nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres"
    cp "$WORK/logs/train.log" "$OUTDIR/train_log.txt" 2>/dev/null
    grep -E "Epoch [0-9]+$|Epoch time|train_loss|val_loss" "$WORK/logs/train.log" 2>/dev/null | tail -12
    grep "Pseudo dice" "$WORK/logs/train.log" 2>/dev/null | tail -1 | cut -c1-400
    PYTHONPATH="$SITE" "$PY" bench/gpu/trained_weights.py export "$RESULT" "$OUTDIR" || return 1
    echo "=== [$(( $(date +%s) - START )) s] done"
    ls -la "$OUTDIR"
    return 0
}

main "$@" 2>&1 | tee "$OUTDIR/train_sh_log.txt"
exit "${PIPESTATUS[0]}"
