#!/usr/bin/env bash
# Create bench/.venv-official with the official TotalSegmentator 2.18.0 (reference for compare.py).
#
# torch==2.13.0 is installed FIRST: on this machine pip finds the CPU build of exactly that
# version on local disk (pip find-links); any other torch spec would pull a multi-GB CUDA build
# from PyPI. The later TotalSegmentator install is pinned to the same torch with a constraints file,
# so pip cannot "upgrade" it. cupy / cucim are never installed (they change the official
# tool's resampling path); the script fails if they show up.
#
# Idempotent: does nothing when the venv already has TotalSegmentator 2.18.0 and torch 2.13.0.
# Usage: bash bench/official_env.sh            (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-official"
PY="${PYTHON:-python3}"
TS_VERSION=2.18.0
TORCH_VERSION=2.13.0

installed() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/TotalSegmentator" ] || return 1
    "$VENV/bin/python" - "$TS_VERSION" "$TORCH_VERSION" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    ok = version("TotalSegmentator") == sys.argv[1] and version("torch").split("+")[0] == sys.argv[2]
    version("nnunetv2"), version("torchvision")  # a dependency removed by hand -> reinstall
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PYEOF
}

check_no_cuda_extras() {
    "$VENV/bin/python" - <<'PYEOF'
import sys
from importlib.metadata import distributions
bad = sorted({d.metadata["Name"] for d in distributions()
              if d.metadata["Name"] and d.metadata["Name"].lower().startswith(("cupy", "cucim", "nvidia-"))})
if bad:
    print("official_env.sh: unwanted GPU packages in the venv:", ", ".join(bad), file=sys.stderr)
    sys.exit(1)
PYEOF
}

# PyPI's torchvision wheels (pulled in by timm <- dynamic-network-architectures) are built against the CUDA
# torch: with the CPU torch their _C extension cannot load (libtorch_cuda.so missing), and then
# `import torchvision` dies with "operator torchvision::nms does not exist" (two unguarded register_fake
# calls in torchvision/_meta_registrations.py). nnU-Net imports every trainer module while looking up the
# trainer class, primus_trainers -> timm -> torchvision among them, so the official tool would crash.
# There is no CPU torchvision on PyPI, so when (and only when) the extension is missing we install a tiny
# import hook into the venv that defines the schemas of those two ops before torchvision registers fake
# kernels for them. torchvision's ops stay unusable (as without _C); TotalSegmentator never calls them.
fix_torchvision() {
    local sp
    sp="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    if "$VENV/bin/python" -c 'import torchvision' 2>/dev/null; then
        return 0
    fi
    cat > "$sp/_bench_torchvision_shim.py" <<'PYEOF'
"""Written by bench/official_env.sh (benchmark venv only).

torchvision from PyPI is a CUDA build; with the CPU torch its _C extension does not load and
`import torchvision` fails in _meta_registrations ("operator torchvision::nms does not exist").
Just before that module is imported, and only if torchvision has no ops, define the schemas of the
two ops it registers fake kernels for unconditionally. Nothing else changes.
"""
import importlib.abc
import sys

_lib = None


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        global _lib
        if fullname == "torchvision._meta_registrations":
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            try:
                import torch
                import torchvision.extension as ext
                if not ext._has_ops() and _lib is None:
                    _lib = torch.library.Library("torchvision", "DEF")
                    for op in ("nms", "qnms"):
                        _lib.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except Exception as e:  # never break the import because of the shim
                print(f"_bench_torchvision_shim: {e!r}", file=sys.stderr)
        return None


sys.meta_path.insert(0, _Finder())
PYEOF
    echo "import _bench_torchvision_shim" > "$sp/_bench_torchvision_shim.pth"
    if ! "$VENV/bin/python" -c 'import torchvision' ; then
        echo "official_env.sh: torchvision still does not import" >&2
        return 1
    fi
    echo "official_env.sh: torchvision has no working _C (CUDA wheel, CPU torch): import shim installed"
}

if installed; then
    check_no_cuda_extras
    fix_torchvision
    echo "official_env.sh: $VENV already has TotalSegmentator $TS_VERSION with torch $TORCH_VERSION"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --upgrade pip setuptools wheel >/dev/null

# 1) torch first (CPU build, from local disk)
"${PIP[@]}" install "torch==$TORCH_VERSION"

# 2) TotalSegmentator and its deps, torch held where it is
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
"${PIP[@]}" install -c "$CONSTRAINTS" "TotalSegmentator==$TS_VERSION"

fix_torchvision
installed || { echo "official_env.sh: install did not yield TotalSegmentator $TS_VERSION + torch $TORCH_VERSION" >&2; exit 1; }
check_no_cuda_extras
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(totalsegmentator|nnunetv2|dynamic.network.architectures|torch|numpy|scipy|nibabel|simpleitk) ' || true
echo "official_env.sh: ready: $VENV/bin/TotalSegmentator"
