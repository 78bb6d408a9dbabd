#!/usr/bin/env bash
# GPU benchmark, official TotalSegmentator 2.18.0 against ours, in ONE call on the lent GPU machine.
#
#   on the device:  bash bench/gpu/run.sh             (carry .whl and .gpu_input: bash bench/gpu/prepare.sh)
#   here (CPU):     bash bench/gpu/run.sh --dry-run   (needs bash bench/gpu/prepare.sh --dry-run once)
#
# Device run: installs the carried wheels (shared deps, official, ours: three --target folders, since both
# packages ship a `totalsegmentator` module), makes official-size random weights (bench/make_random_weights.py),
# then on the chest CT runs, in this order, official and ours with `--fast --ml -d gpu`, then `--ml -d gpu`
# (each on a fresh copy of the weights home, under `timeout`), measuring wall time and the GPU's peak used memory
# over its idle level, compares the two outputs voxel for voxel and prints a table.
# The official runs see neither cupy nor cucim (bench/gpu/stubs/official/sitecustomize.py) and get a SimpleITK
# stub (bench/gpu/stubs/official/SimpleITK; unused on this path, too big to carry).
# Dry run: the same steps with -d cpu, the tiny weights ../shared/data/fake_weights_tiny, example_ct.nii.gz,
# the Python 3.11 venv bench/.venv-gpu-dry (torch CPU + what the device image provides) and 3.11 variants of the
# binary wheels.
#
# Results: $OUT/gpu_results.json, $OUT/gpu_log.txt (this output), $OUT/gpu_runs_log.txt (the tools' own output),
# $OUT/seg_<case>_<tool>.nii.gz; without $OUT: bench/work/gpu/.
# Environment knobs: BENCH_BUDGET_S (seconds for everything from the start of this script: default 560 on the
# device, 3600 dry), BENCH_CAP_FAST_S / BENCH_CAP_ML_S (timeout of one tool run: 150 / 270 on the device).
# BENCH_CUDNN_DETERMINISTIC=1: both tools with cuDNN's algorithm choice pinned (bench/gpu/stubs/common/cudnn_pin.py),
# to tell arithmetic differences from cuDNN benchmark mode's run-to-run choice.
# BENCH_DRY_INPUT (dry run only: another input image, e.g. example_ct_sm.nii.gz on a busy machine).
# Exit status: 0 when every step and all four runs succeeded, 1 otherwise (it goes on past a failed run).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_setup gpu "$@"
LOG="$OUTDIR/gpu_log.txt"

step() { echo; echo "=== [$(( $(date +%s) - START )) s] $*"; }

main() {
    local PY DEVICE BUDGET CAP_FAST CAP_ML INPUT WHOME BASE SHIM=()
    if [ "$MODE" = gpu ]; then
        PY="$(command -v python3)"
        DEVICE=gpu
        BUDGET="${BENCH_BUDGET_S:-560}"
        CAP_FAST="${BENCH_CAP_FAST_S:-150}"
        CAP_ML="${BENCH_CAP_ML_S:-270}"
        INPUT=/tmp/itkelastix_chest_ct.nii.gz  # from .gpu_input/*.nii.xz (see below)
        WHOME=/tmp/home
        BASE=/tmp
    else
        PY="$REPO/bench/.venv-gpu-dry/bin/python"
        DEVICE=cpu
        BUDGET="${BENCH_BUDGET_S:-3600}"
        CAP_FAST="${BENCH_CAP_FAST_S:-600}"
        CAP_ML="${BENCH_CAP_ML_S:-1200}"
        INPUT="${BENCH_DRY_INPUT:-$REPO/../shared/data/totalseg_reference/example_ct.nii.gz}"
        WHOME="$REPO/../shared/data/fake_weights_tiny"
        BASE=/tmp/gpu-dry
        SHIM=(--torchvision-shim)
        [ -x "$PY" ] || { echo "run.sh --dry-run: $PY missing: run bash bench/gpu/prepare.sh --dry-run" >&2; return 1; }
    fi
    local SITE="$BASE/site" SITE_OFF="$BASE/site-official" SITE_OURS="$BASE/site-ours" WORK="$BASE/gpu_bench_work"
    local STUBS="$REPO/bench/gpu/stubs/official:$REPO/bench/gpu/stubs/common"

    step "mode $MODE: $(date '+%F %T'), $(uname -n), $(nproc) CPUs, python $PY, budget $BUDGET s"
    [ -d .whl/official ] && [ -d .whl/ours ] || { echo "no .whl/official or .whl/ours: run bash bench/gpu/prepare.sh (and carry .whl)"; return 1; }
    if [ "$MODE" = gpu ] && [ ! -f "$INPUT" ]; then  # the CT travels as xz (smaller); both tools read a .nii.gz
        "$PY" -c 'import gzip, lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, gzip.open(sys.argv[2] + ".tmp", "wb", compresslevel=6) as dst:
    shutil.copyfileobj(src, dst, 1 << 22)' "$REPO/.gpu_input/itkelastix_chest_ct.nii.xz" "$INPUT" \
            && mv "$INPUT.tmp" "$INPUT" || { echo "could not unpack .gpu_input/itkelastix_chest_ct.nii.xz"; return 1; }
    fi
    [ -f "$INPUT" ] || { echo "input $INPUT missing (carry .gpu_input)"; return 1; }
    if command -v nvidia-smi >/dev/null; then
        timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || true
    fi
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuda available:", torch.cuda.is_available(), "| cuDNN", torch.backends.cudnn.version())' || return 1
    if [ "$MODE" = gpu ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "no CUDA device visible to torch: nothing to measure"; return 1
    fi

    step "installing the wheels: shared -> $SITE, official -> $SITE_OFF, ours -> $SITE_OURS"
    rm -rf "$SITE" "$SITE_OFF" "$SITE_OURS" "$WORK"
    mkdir -p "$WORK"
    local wheels=()
    mapfile -t wheels < <(shared_wheels)
    pip_target "$PY" "$SITE" "${wheels[@]}" || { echo "install of the shared wheels FAILED"; return 1; }
    pip_target "$PY" "$SITE_OFF" .whl/official/*.whl || { echo "install of TotalSegmentator FAILED"; return 1; }
    local OURS_PP
    if [ "$(PYTHONPATH="$SITE" "$PY" bench/gpu/gpu_bench.py srchash "$REPO")" = "$(cat .whl/ours/SOURCE_SHA256 2>/dev/null)" ]; then
        pip_target "$PY" "$SITE_OURS" .whl/ours/*.whl || { echo "install of ours FAILED"; return 1; }
        OURS_PP="$SITE_OURS:$SITE"
        echo "ours: the wheel (built from these very sources)"
    else
        OURS_PP="$REPO:$SITE"
        echo "WARNING: totalseg/ or totalsegmentator/ changed since bench/gpu/prepare.sh built .whl/ours: running ours from the working tree"
    fi
    if [ "${BENCH_CUDNN_DETERMINISTIC:-0}" = 1 ]; then  # agreement check: cuDNN pinned in both tools' runs
        export BENCH_CUDNN_DETERMINISTIC
        OURS_PP="$REPO/bench/gpu/stubs/ours:$REPO/bench/gpu/stubs/common:$OURS_PP"
        echo "BENCH_CUDNN_DETERMINISTIC=1: cuDNN deterministic, benchmark mode off, in both tools (ours pins it by itself too)"
    fi
    # compile now, so that neither tool's measured run pays for compiling the modules it imports first
    "$PY" -m compileall -q -j 0 "$SITE" "$SITE_OFF" >/dev/null 2>&1
    if [ "$OURS_PP" = "$SITE_OURS:$SITE" ]; then "$PY" -m compileall -q -j 0 "$SITE_OURS" >/dev/null 2>&1
    else "$PY" -m compileall -q -j 0 "$REPO/totalseg" "$REPO/totalsegmentator" >/dev/null 2>&1; fi
    echo "installed: $(ls "$SITE" | grep -c dist-info) shared, $(ls "$SITE_OFF" | grep -c dist-info) official, $(ls "$SITE_OURS" 2>/dev/null | grep -c dist-info) ours; $(du -sh "$BASE" 2>/dev/null | cut -f1) in $BASE"

    step "pre-flight: which packages each tool sees"
    (cd "$WORK" && PYTHONPATH="$STUBS:$SITE_OFF:$SITE" BENCH_TORCHVISION_SHIM=$([ "$MODE" = dry ] && echo 1 || echo 0) "$PY" -c '
import importlib.util as u, importlib.metadata as md, sys
import totalsegmentator, SimpleITK, nnunetv2, dynamic_network_architectures, timm, torch, numpy
print("official: totalsegmentator", md.version("TotalSegmentator"), "from", totalsegmentator.__file__)
print("  nnunetv2", md.version("nnunetv2"), "| dynamic_network_architectures", md.version("dynamic_network_architectures"),
      "| timm", timm.__version__, "| torch", torch.__version__, "| numpy", numpy.__version__)
print("  SimpleITK stub:", getattr(SimpleITK, "BENCH_GPU_STUB", False), "| cupy visible:", u.find_spec("cupy") is not None,
      "| cucim visible:", u.find_spec("cucim") is not None)
ok = u.find_spec("cupy") is None and u.find_spec("cucim") is None and "site-official" in totalsegmentator.__file__
sys.exit(0 if ok else 1)') || { echo "pre-flight of the official environment FAILED"; return 1; }
    (cd "$WORK" && PYTHONPATH="$OURS_PP" "$PY" -c '
import importlib.util as u, totalseg, nibabel
print("ours: totalseg", totalseg.__version__, "from", totalseg.__file__, "| nibabel", nibabel.__version__,
      "| cupy importable (unused by ours):", u.find_spec("cupy") is not None)') || { echo "pre-flight of our environment FAILED"; return 1; }

    if [ "$MODE" = gpu ]; then
        step "making the official-size random weights in $WHOME (bench/make_random_weights.py)"
        rm -rf "$WHOME"
        PYTHONPATH="$SITE" "$PY" bench/make_random_weights.py --out "$WHOME" --ids 291 292 293 294 295 297 298 \
            --seed 0 --template "$REPO/.gpu_input/template" || { echo "make_random_weights FAILED"; return 1; }
        du -sh "$WHOME"
        step "CUDA warm-up (driver and context start-up, outside the measured runs)"
        "$PY" -c '
import time, torch
t = time.perf_counter()
x = torch.randn(1, 1, 64, 64, 64, device="cuda", dtype=torch.float16)
w = torch.randn(32, 1, 3, 3, 3, device="cuda", dtype=torch.float16)
torch.nn.functional.conv3d(x, w, padding=1).sum().item()
print(f"{torch.cuda.get_device_name()}: first conv3d after {time.perf_counter() - t:.1f} s")' || true
    else
        step "dry run: tiny weights $WHOME (copied per run)"
    fi

    local MACHINE
    MACHINE="$("$PY" -c '
import json, os, platform, subprocess, sys, torch
d = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
     "cpus": os.cpu_count(), "host": platform.node()}
try:
    d["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
except Exception:
    d["gpu"] = None
d["summary"] = "%s; %s CPUs; python %s; torch %s (CUDA %s)" % (d["gpu"] or "no GPU", d["cpus"], d["python"], d["torch"], d["cuda"])
print(json.dumps(d))' 2>/dev/null || echo '{}')"

    step "runs: official then ours, --fast --ml first, then --ml (-d $DEVICE; timeouts $CAP_FAST s / $CAP_ML s; deadline at $BUDGET s)"
    PYTHONPATH="$SITE" "$PY" bench/gpu/gpu_bench.py run --mode "$MODE" --python "$PY" --device "$DEVICE" \
        --input "$INPUT" --home "$WHOME" --work "$WORK" --out "$OUTDIR" \
        --pp-official "$STUBS:$SITE_OFF:$SITE" --pp-ours "$OURS_PP" \
        --case "fast_ml:--fast --ml" --case "ml:--ml" --repeat-official fast_ml \
        --deadline "$(( START + BUDGET ))" --cap-fast "$CAP_FAST" --cap-ml "$CAP_ML" "${SHIM[@]}" --machine "$MACHINE"
    local rc=$?
    step "done (exit $rc)"
    return $rc
}

main "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
