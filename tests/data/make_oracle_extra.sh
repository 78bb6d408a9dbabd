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
TS="$ROOT/bench/.venv-official/bin/TotalSegmentator"
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
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(pleural_pericard_effusion oculomotor_muscles tissue_types heartchambers_highres vertebrae_pp
                                     vertebrae_pp_refined)
for c in "${cases[@]}"; do
    start=$(date +%s)
    "$TS" -i "$REF/example_ct_sm.nii.gz" -o "$OUT/$c.nii.gz" -ta "$c" --ml -d cpu -q
    echo "$c: $(( $(date +%s) - start )) s"
done
