#!/usr/bin/env bash
# Make tests/data/oracle_extra: what the official TotalSegmentator 2.18.0 (bench/.venv-official, see
# bench/official_env.sh) writes for subtasks that ../shared/data/oracle_tiny does not cover, with
# ../shared/data/fake_weights_tiny plus tests/data/tiny_weights as the weights home (a copy, with a
# made-up licence of the right form in config.json: the official tool checks it offline by length).
# Usage: bash tests/data/make_oracle_extra.sh [case ...]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
REF="$ROOT/../shared/data/totalseg_reference"
OUT="$HERE/oracle_extra"
TS="${TOTALSEG_OFFICIAL_TS:-$ROOT/bench/.venv-official/bin/TotalSegmentator}"
HOME_COPY="$(mktemp -d)/home"
cp -r "$ROOT/../shared/data/fake_weights_tiny" "$HOME_COPY"
chmod -R u+w "$HOME_COPY"
cp -r "$HERE/tiny_weights/nnunet/results/." "$HOME_COPY/nnunet/results/"
python3 - "$HOME_COPY/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c["license_number"] = "aca_TESTTESTTEST12"
json.dump(c, open(p, "w"), indent=4)
PY
export TOTALSEG_HOME_DIR="$HOME_COPY"
mkdir -p "$OUT"
# The sheared input (fast_sheared) is built from example_ct_sm, not stored: tests build it the same way.
SHEARED="$(dirname "$HOME_COPY")/sheared_ct.nii.gz"
python3 "$HERE/make_sheared_ct.py" "$REF/example_ct_sm.nii.gz" "$SHEARED"
declare -A INPUTS=([fast_sheared]="$SHEARED")
# Option cases (tests/test_options.py): the options after -i/-o, per case; the rest are task cases.
declare -A OPTIONS=(
    [fast_rmb]="-o $OUT/fast_rmb.nii.gz --fast --ml -rmb -rp $OUT/fast_rmb_report.json"
    [fastest_rmb500]="-o $OUT/fastest_rmb500.nii.gz --fastest --ml -rmb 500"
    [fast_v1o]="-o $OUT/fast_v1o.nii.gz --fast --ml -v1o"
    [fast_v1o_roi]="-o $OUT/fast_v1o_roi.nii.gz --fast --ml -v1o -rs liver aorta heart kidney_cyst_left"
    [fastest_lowres]="-o $OUT/fastest_lowres.nii.gz --fastest --ml -sl"
    [fastest_lowres_files]="-o $OUT/fastest_lowres_files --fastest -sl"
    [fastest_stats]="-o $OUT/fastest_stats.nii.gz --fastest --ml -s $OUT/fastest_stats.json"
    [fastest_ho_legacy]="-o $OUT/fastest_ho_legacy.nii.gz --fastest --ml --higher_order_resampling_LEGACY"
    [fastest_ho_legacy_roi]="-o $OUT/fastest_ho_legacy_roi.nii.gz --fastest --ml --higher_order_resampling_LEGACY -rs trachea vertebrae_T9 liver"
    [fast_sheared]="-o $OUT/fast_sheared.nii.gz --fast --ml"
)
# API cases: options without a command-line flag, through the official Python API (official_api_case.py, run by
# the Python beside $TS); each writes <case>.nii.gz and <case>.json (its statistics).
declare -A API=(
    [fast_stats_normalized]='{"fast": true, "ml": true, "statistics_normalized_intensities": true}'
    [fastest_stats_normalized_median]='{"fastest": true, "ml": true, "statistics_normalized_intensities": true, "stats_aggregation": "median", "statistics_exclude_masks_at_border": false}'
)
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(pleural_pericard_effusion oculomotor_muscles tissue_types heartchambers_highres vertebrae_pp
                                     vertebrae_pp_refined "${!OPTIONS[@]}" "${!API[@]}")
for c in "${cases[@]}"; do
    start=$(date +%s)
    if [ -n "${API[$c]:-}" ]; then
        "$(dirname "$TS")/python" "$HERE/official_api_case.py" "$REF/example_ct_sm.nii.gz" "$OUT/$c.nii.gz" \
            "$OUT/$c.json" "${API[$c]}"
    elif [ -n "${OPTIONS[$c]:-}" ]; then
        rm -rf "$OUT/$c"
        # shellcheck disable=SC2086
        "$TS" -i "${INPUTS[$c]:-$REF/example_ct_sm.nii.gz}" ${OPTIONS[$c]} -d cpu -q
    else
        "$TS" -i "$REF/example_ct_sm.nii.gz" -o "$OUT/$c.nii.gz" -ta "$c" --ml -d cpu -q
    fi
    echo "$c: $(( $(date +%s) - start )) s"
done
