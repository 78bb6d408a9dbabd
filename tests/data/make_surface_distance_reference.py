"""Remake tests/data/surface_distance_reference.json with DeepMind's ``surface_distance`` (PyPI 0.1).

That release needs NumPy < 2, so it runs in a throwaway venv, never in the project's environment::

    python3 -m venv /tmp/sdvenv
    /tmp/sdvenv/bin/pip install "numpy<2" "scipy<1.14" surface-distance==0.1
    /tmp/sdvenv/bin/python tests/data/make_surface_distance_reference.py

The masks come from tests/data/surface_distance_cases.py (formulas, so the test remakes the same masks).
"""
import json
import sys
from pathlib import Path

import numpy as np
import surface_distance as sd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from surface_distance_cases import CASES  # noqa: E402

out = {"made_with": f"surface-distance 0.1 (DeepMind), numpy {np.__version__}; "
                    "tests/data/make_surface_distance_reference.py", "cases": {}}
for name, (make, spacing) in CASES.items():
    gt, pred = make()
    s = sd.compute_surface_distances(gt, pred, spacing)
    out["cases"][name] = {
        "spacing": list(spacing),
        "nsd_1mm": float(sd.compute_surface_dice_at_tolerance(s, 1.0)),
        "nsd_3mm": float(sd.compute_surface_dice_at_tolerance(s, 3.0)),
        "dice": float(sd.compute_dice_coefficient(gt, pred)),
        "surface_area_gt": float(s["surfel_areas_gt"].sum()),
        "surface_area_pred": float(s["surfel_areas_pred"].sum()),
    }
(HERE / "surface_distance_reference.json").write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(out, indent=1))
