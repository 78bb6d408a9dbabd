#!/usr/bin/env bash
# Create a venv with the official TotalSegmentator 2.18.0: the reference for bench/compare.py and for the
# live same-machine parity test (tests/test_official_live.py).
#
# Settings (environment variables):
#   TOTALSEG_OFFICIAL_VENV   where the venv lives (default: bench/.venv-official). The live test keeps it in
#                            a cache folder (~/.cache/totalseg/...) so one machine builds it once.
#   TOTALSEG_OFFICIAL_TORCH  the torch version for the official tool (default: the torch installed in
#                            $PYTHON, without its local "+cpu"/"+cu130" part; 2.13.0 if $PYTHON has none).
#                            A bit-for-bit comparison needs the same torch on both sides.
#   PYTHON                   the interpreter that makes the venv (default: python3).
#
# Where torch comes from:
# - $PYTHON already has that torch: the venv is made with --system-site-packages and reuses it (and the
#   packages it needs, e.g. the CUDA runtime libraries of a CUDA build; on the CPU they are unused), so no
#   multi-GB download. Everything the official tool needs beyond that (TotalSegmentator, nnunetv2, ...) is
#   installed into the venv, which comes first on the venv's sys.path; pip never removes or changes packages
#   outside the venv, so the main environment is left as it is. Checked after the install: `totalsegmentator`
#   imports from the venv (not the forwarding package of this project, which the main environment may have).
# - otherwise an isolated venv, and torch==$TORCH first: on this machine pip finds the CPU build of 2.13.0 on
#   local disk (pip find-links); other versions may be CUDA builds of several GB.
# The later TotalSegmentator install is pinned to the same torch with a constraints file, so pip cannot
# "upgrade" it. cupy / cucim are never allowed (they change the official tool's resampling path), nor GPU
# (nvidia-*) packages that the venv's torch does not itself require; the script fails if they show up.
#
# Idempotent: does nothing when the venv already has TotalSegmentator 2.18.0 with that torch; a venv made for
# another torch or in the other mode is removed and made again. Concurrent runs wait for each other (flock).
# Exit status 75: no package registry holds TotalSegmentator 2.18.0 (offline machine); nothing was installed.
# Usage: bash bench/official_env.sh            (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${TOTALSEG_OFFICIAL_VENV:-$HERE/.venv-official}"
PY="${PYTHON:-python3}"
TS_VERSION=2.18.0
PY_TORCH="$("$PY" -c 'from importlib.metadata import version; print(version("torch").split("+")[0])' 2>/dev/null || true)"
TORCH_VERSION="${TOTALSEG_OFFICIAL_TORCH:-${PY_TORCH:-2.13.0}}"
TORCH_VERSION="${TORCH_VERSION%%+*}"
if [ "$PY_TORCH" = "$TORCH_VERSION" ]; then SYSTEM_SITE=true; else SYSTEM_SITE=false; fi

mkdir -p "$(dirname "$VENV")"
exec 9>"${TMPDIR:-/tmp}/official_env.$(printf %s "$VENV" | cksum | cut -d' ' -f1).lock"
flock 9

venv_mode_ok() {
    # the venv exists and was made in the mode chosen above (with or without the system site-packages)
    [ -f "$VENV/pyvenv.cfg" ] && [ -x "$VENV/bin/python" ] || return 1
    grep -qiE "^include-system-site-packages *= *$SYSTEM_SITE" "$VENV/pyvenv.cfg"
}

installed() {
    venv_mode_ok && [ -x "$VENV/bin/TotalSegmentator" ] || return 1
    # from / : the current folder (first on sys.path) may be a checkout with its own `totalsegmentator`
    (cd / && "$VENV/bin/python" - "$TS_VERSION" "$TORCH_VERSION" "$VENV") <<'PYEOF'
import os
import sys
from importlib.metadata import version, PackageNotFoundError
from importlib.util import find_spec
try:
    ok = version("TotalSegmentator") == sys.argv[1] and version("torch").split("+")[0] == sys.argv[2]
    version("nnunetv2"), version("torchvision")  # a dependency removed by hand -> reinstall
    spec = find_spec("totalsegmentator")  # the official package, not a forwarding one from outside the venv
    ok = ok and spec is not None and os.path.realpath(spec.origin).startswith(os.path.realpath(sys.argv[3]) + os.sep)
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PYEOF
}

check_no_cuda_extras() {
    "$VENV/bin/python" - <<'PYEOF'
import re
import sys
from importlib.metadata import PackageNotFoundError, distributions, requires
# GPU packages that torch itself needs (a CUDA build of torch: its runtime libraries, directly or through
# cuda-toolkit) are fine: the official tool runs with -d cpu. cupy / cucim never are, nor nvidia-* packages
# outside torch's own requirements.
def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()
torch_needs, todo = set(), ["torch"]
while todo:
    try:
        reqs = requires(todo.pop()) or []
    except PackageNotFoundError:
        continue
    for r in reqs:
        n = norm(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0])
        if n not in torch_needs:
            torch_needs.add(n)
            todo.append(n)
# nvidia-* wheels that the base interpreter's site-packages hold (left there by a CUDA torch that was
# replaced by the CPU build) are never loaded by a CPU torch: only those installed into the venv count.
def in_venv(d):
    return str(d.locate_file("")).startswith(sys.prefix)
bad = sorted({n for d in distributions() if (n := d.metadata["Name"])
              and (norm(n).startswith(("cupy", "cucim"))
                   or (norm(n).startswith("nvidia-") and norm(n) not in torch_needs and in_venv(d)))})
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

# Offline machine: say so with its own exit status (the live test skips on it) before anything is changed.
PROBE="$(mktemp -d)"
if ! "$PY" -m pip download --no-deps --no-cache-dir --retries 1 --timeout 30 -d "$PROBE" \
        "TotalSegmentator==$TS_VERSION" >/dev/null 2>&1; then
    rm -rf "$PROBE"
    echo "official_env.sh: no package registry reachable that holds TotalSegmentator $TS_VERSION" >&2
    exit 75
fi
rm -rf "$PROBE"

if [ -e "$VENV" ] && ! venv_mode_ok; then
    if [ -f "$VENV/pyvenv.cfg" ]; then
        echo "official_env.sh: $VENV was made for another torch or mode: making it again"
        rm -rf "$VENV"
    elif [ -n "$(ls -A "$VENV" 2>/dev/null)" ]; then
        echo "official_env.sh: $VENV exists and is not a venv; not touching it" >&2
        exit 1
    fi
fi
if [ ! -x "$VENV/bin/python" ]; then
    if $SYSTEM_SITE; then
        echo "official_env.sh: $PY has torch $TORCH_VERSION: the venv reuses it (--system-site-packages)"
        "$PY" -m venv --system-site-packages "$VENV"
        # $PY may itself run in a venv, whose packages --system-site-packages does not show: add them
        PARENT_SITE="$("$PY" -c 'import site, sys; sys.prefix != sys.base_prefix and print(*site.getsitepackages(), sep="\n")')"
        if [ -n "$PARENT_SITE" ]; then
            echo "$PARENT_SITE" > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_official_env_parent.pth"
        fi
    else
        "$PY" -m venv "$VENV"
    fi
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --upgrade pip setuptools wheel >/dev/null

# 1) torch first (isolated venv only: from local disk where it lies there)
$SYSTEM_SITE || "${PIP[@]}" install "torch==$TORCH_VERSION"

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
