# Shared by bench/gpu/run.sh and bench/gpu/train.sh (sourced, not run).

# bench_setup OUTNAME ARGS...: strict-ish shell, START, REPO (cwd), MODE (gpu, or dry with --dry-run) and
# OUTDIR ($OUT on the device, else bench/work/OUTNAME).
bench_setup() {
    set -uo pipefail
    export PYTHONUNBUFFERED=1
    START=$(date +%s)
    REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    cd "$REPO" || exit 1
    MODE=gpu
    [ "${2:-}" = "--dry-run" ] && MODE=dry
    OUTDIR="${OUT:-$REPO/bench/work/$1}"
    mkdir -p "$OUTDIR"
}

# pip_target PY FOLDER WHEEL...: install the carried wheels into FOLDER (no index, no dependencies).
pip_target() {
    local py="$1" target="$2"
    shift 2
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
}

# shared_wheels: the shared wheels of .whl/, one per line; in the dry run (Python 3.11 here) the 3.11 variant of a
# cp312 wheel where prepare.sh --dry-run fetched one.
shared_wheels() {
    local w name alt
    for w in .whl/*.whl; do
        if [ "$MODE" = dry ]; then
            name="$(basename "$w" | cut -d- -f1)"
            alt="$(ls bench/work/gpu-dry/wheels/"$name"-*.whl 2>/dev/null | head -1)"
            [ -n "$alt" ] && w="$alt"
        fi
        echo "$w"
    done
}
