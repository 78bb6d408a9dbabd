#!/usr/bin/env bash
# Prepare the GPU benchmark (bench/gpu/run.sh) for the lent GPU machine. Run HERE, in the repo, with network.
#
#   bash bench/gpu/prepare.sh              fills .whl/ and .gpu_input/ (both git-ignored, both carried)
#   bash bench/gpu/prepare.sh --train      also .gpu_input/train/ for bench/gpu/train.sh (training on the GPU)
#   bash bench/gpu/prepare.sh --dry-run    also the extras of the CPU dry run here (bench/.venv-gpu-dry,
#                                          Python 3.11 variants of the binary wheels in bench/work/gpu-dry/)
#
# .whl/            Python 3.12 manylinux x86_64 wheels of what the device lacks (device list: KINDS.md):
#   *.whl            shared by both tools (nnunetv2, dynamic-network-architectures, nibabel, ...)
#   official/        TotalSegmentator 2.18.0
#   ours/            totalseg (built from this working tree) + SOURCE_SHA256 of the sources it was built from
#                    (ours ships a `totalsegmentator` package too, so the two never share one --target folder)
# .gpu_input/      the chest CT (xz of the unchanged .nii, 27 MiB) and template/: plans.json/dataset.json of models
#                  291-295, 297, 298 with checkpoints holding only the trainer name (what
#                  bench/make_random_weights.py reads; the device has no /work/shared).
#
# Left out on purpose (see bench/README.md, "GPU benchmark (lent device)"): SimpleITK (50 MiB; stubbed, see
# bench/gpu/stubs/official/SimpleITK), imagecodecs and python-gdcm (optional imports), fury/vtk/dipy/blosc
# (not imported on this path), argparse (a py2 backport that would shadow the standard library).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
DRY=0
TRAIN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --train) TRAIN=1 ;;
        *) echo "prepare.sh: unknown option $arg (--dry-run, --train)" >&2; exit 2 ;;
    esac
done
# --train: .gpu_input/train/ for bench/gpu/train.sh, the nnU-Net folders of dataset 998 from a train_fastest.py
# work folder (its preparation steps ran there; 3 MiB).
TRAIN_WORK="${TRAIN_WORK:-$REPO/bench/work/train_fastest_noda}"

PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

# Wheels for both tools. Versions: what TotalSegmentator 2.18.0 resolves to today (checked 2026-11-29).
SHARED=(
    nnunetv2==2.8.1
    dynamic-network-architectures==0.4.4
    batchgenerators==0.25.5
    batchgeneratorsv2==0.3.6
    nibabel==5.4.2
    pydicom==3.0.2
    dicom2nifti==2.6.2
    blosc2==4.14.1
    numexpr==2.14.2
    ndindex==1.10.1
    connected-components-3d==4.1.1
    timm==1.0.22            # dynamic-network-architectures 0.4.4 wants timm<1.0.23; the device's version is unknown
    xmltodict==1.0.4
    yacs==0.1.8
    graphviz==0.21
    xvfbwrapper==0.2.37
    imgkit==1.2.3
)
ACVL=acvl-utils==0.2.6        # sdist only on PyPI: built into a wheel here (pure Python)
OFFICIAL=TotalSegmentator==2.18.0
IDS=(291 292 293 294 295 297 298)
CT="$REPO/../shared/data/extra_ct/itkelastix_chest_ct.nii.gz"
TEMPLATE_SRC="$REPO/../shared/data/fake_weights_tiny"

quiet_pip() { grep -v "^WARNING: Location 'file:" || true; }

download312() {  # NAME==VERSION... into $1
    local dst="$1"; shift
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
        -d "$dst" "$@" 2>&1 | quiet_pip
}

NEW="$(mktemp -d)"
trap 'rm -rf "$NEW"' EXIT
mkdir -p "$NEW/official" "$NEW/ours"

echo "prepare: downloading Python 3.12 wheels (${#SHARED[@]} shared + $OFFICIAL)"
for spec in "${SHARED[@]}"; do download312 "$NEW" "$spec"; done
download312 "$NEW/official" "$OFFICIAL"

echo "prepare: building $ACVL (sdist only on PyPI)"
"$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$NEW" "$ACVL" 2>&1 | quiet_pip

echo "prepare: building our wheel from the working tree"
SRC="$(mktemp -d)"
cp -r pyproject.toml README.md totalseg totalsegmentator "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$NEW/ours" "$SRC" 2>&1 | quiet_pip
rm -rf "$SRC"
"$PY" bench/gpu/gpu_bench.py srchash "$REPO" > "$NEW/ours/SOURCE_SHA256"

for d in "$NEW" "$NEW/official" "$NEW/ours"; do
    n="$(ls "$d"/*.whl | sed -E 's#.*/##; s#-[0-9].*##' | tr 'A-Z_' 'a-z-' | sort | uniq -d)"
    [ -z "$n" ] || { echo "prepare: two versions of: $n" >&2; exit 1; }
done
echo "prepare: Requires-Dist coverage"
"$PY" bench/gpu/gpu_bench.py check-wheels "$NEW" "$NEW/official" "$NEW/ours"

rm -rf .whl
mv "$NEW" .whl
chmod 755 .whl
trap - EXIT

echo "prepare: .gpu_input/ (chest CT, weights template)"
mkdir -p .gpu_input
# The CT travels as xz (27 MiB instead of gzip's 36): run.sh turns it back into a .nii.gz there, outside the clock.
CT_SUM="$(sha256sum "$CT" | cut -d' ' -f1)"
if [ "$(cat .gpu_input/itkelastix_chest_ct.source_sha256 2>/dev/null)" != "$CT_SUM" ]; then
    rm -f .gpu_input/itkelastix_chest_ct.nii.gz .gpu_input/itkelastix_chest_ct.nii.xz
    echo "prepare: compressing the chest CT with xz -9 (about 1.5 min)"
    gzip -dc "$CT" | xz -9 -T0 -c > .gpu_input/itkelastix_chest_ct.nii.xz.tmp
    mv .gpu_input/itkelastix_chest_ct.nii.xz.tmp .gpu_input/itkelastix_chest_ct.nii.xz
    echo "$CT_SUM" > .gpu_input/itkelastix_chest_ct.source_sha256
fi
rm -rf .gpu_input/template
"$PY" bench/gpu/gpu_bench.py make-template "$TEMPLATE_SRC" .gpu_input/template "${IDS[@]}"

if [ "$TRAIN" = 1 ]; then
    echo "prepare --train: .gpu_input/train/ from $TRAIN_WORK"
    for d in nnUNet_raw nnUNet_preprocessed; do
        [ -d "$TRAIN_WORK/$d/Dataset998_TotalFastestBench" ] || {
            echo "prepare --train: $TRAIN_WORK/$d/Dataset998_TotalFastestBench missing: run bench/train_fastest.py --dry-run --work $TRAIN_WORK first" >&2
            exit 1; }
    done
    rm -rf .gpu_input/train
    mkdir -p .gpu_input/train/nnUNet_raw .gpu_input/train/nnUNet_preprocessed
    cp -r "$TRAIN_WORK/nnUNet_raw/Dataset998_TotalFastestBench" .gpu_input/train/nnUNet_raw/
    cp -r "$TRAIN_WORK/nnUNet_preprocessed/Dataset998_TotalFastestBench" .gpu_input/train/nnUNet_preprocessed/
else
    rm -rf .gpu_input/train  # only the training call carries it
fi

if [ "$DRY" = 1 ]; then
    DRYDIR="$REPO/bench/work/gpu-dry"
    VENV="$REPO/bench/.venv-gpu-dry"
    echo "prepare --dry-run: Python 3.11 variants of the binary wheels -> $DRYDIR/wheels"
    rm -rf "$DRYDIR/wheels"
    mkdir -p "$DRYDIR/wheels"
    for w in .whl/*.whl .whl/official/*.whl; do
        case "$w" in *-none-any.whl|*-abi3-*.whl) continue ;; esac
        spec="$(basename "$w" | awk -F- '{print $1"=="$2}')"
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
            "${PLAT[@]}" -d "$DRYDIR/wheels" "$spec" 2>&1 | quiet_pip
    done
    ls "$DRYDIR/wheels"
    # A clean venv with what the device image provides (and no SimpleITK, nibabel, ... of this machine):
    # CPU torch 2.13.0 from this machine's disk; torchvision 0.28.0 from PyPI is a CUDA build (run.sh --dry-run
    # enables the import shim of official_env.sh for the official tool).
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, scipy, skimage, sklearn, pandas' 2>/dev/null; then
        echo "prepare --dry-run: creating $VENV (about 2 min)"
        "$PY" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q torch==2.13.0 torchvision==0.28.0 numpy scipy scikit-image scikit-learn \
            pandas matplotlib seaborn tifffile networkx pillow jinja2 requests tqdm einops pyarrow pyyaml packaging \
            typing-extensions six h5py threadpoolctl msgpack httpx rich typer lazy-loader aiohttp 2>&1 | quiet_pip
    fi
    "$VENV/bin/python" -c 'import sys, torch; print("dry venv:", sys.version.split()[0], "torch", torch.__version__)'
fi

mib() { du -sb "$@" 2>/dev/null | awk '{s+=$1} END {printf "%.1f", s/1048576}'; }
TREE=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk '/\ttotal$/ {s+=$1} END {printf "%.1f", s/1048576}')
W=$(mib .whl); I=$(mib .gpu_input)
echo
echo "prepare: .whl $W MiB ($(find .whl -name '*.whl' | wc -l) wheels), .gpu_input $I MiB, .whl + .gpu_input $(echo "$W + $I" | bc) MiB"
echo "prepare: travelling in all (working tree $TREE MiB + carried): $(echo "$TREE + $W + $I" | bc) MiB of 64 MiB"
if [ "$(echo "$TREE + $W + $I > 63.5" | bc)" = 1 ]; then
    echo "prepare: WARNING: over the 64 MiB a device call may carry" >&2
    exit 1
fi
