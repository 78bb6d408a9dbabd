"""``--report PATH``: the official JSON run manifest (``build_run_report`` of TotalSegmentator 2.18.0).

The keys and their order are the official ones. ``totalsegmentator_version`` is the official version this
package reproduces; ``nnunetv2_version`` is null (no nnU-Net code runs here: the networks run on totalseg's
own engine); three keys follow the official ones: ``totalseg_version``, ``engine`` (exact or fast) and
``warnings`` (the lines of the input checks, :mod:`totalseg.load.image_checks`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from totalseg.device import device_kind
from totalseg.write.atomic import write_atomic


def device_name(device: str) -> str:
    """The official report's device: ``gpu`` for CUDA, else the device type (``cpu``, ``mps``)."""
    kind = device_kind(device)
    return "gpu" if kind == "cuda" else kind


def build_run_report(input, output, task: str, modality: str, license_required: bool, device: str,
                     option_fields: Mapping[str, object], classes: Mapping[int, str], runtime_seconds: float,
                     engine: str | None = None, warnings: Sequence[str] = (), written_to=None) -> dict:
    """The manifest of a finished run (no side effects). ``option_fields``: the options the official manifest
    records, in its order (:func:`totalseg.run.options.report_fields`); ``classes``: the task's classes,
    roi-filtered. ``written_to``: where the outputs are now, when ``output`` names where they will be moved."""
    import torch

    from totalseg.version import OFFICIAL_VERSION, __version__

    output_files = []
    folder = output if written_to is None else written_to
    if folder is not None and Path(folder).is_dir():
        output_files = sorted(p.name for p in Path(folder).glob("*.nii.gz"))
    return {
        "totalsegmentator_version": OFFICIAL_VERSION,
        "nnunetv2_version": None,
        "torch_version": torch.__version__,
        "task": task,
        "modality": modality.upper(),
        "license_required": bool(license_required),
        "device": device_name(device),
        **option_fields,
        "input": str(Path(input)) if isinstance(input, (str, Path)) else "Nifti1Image",
        "output": None if output is None else str(output),
        "num_classes": len(classes),
        "classes": {str(k): v for k, v in classes.items()},
        "runtime_seconds": round(runtime_seconds, 2),
        "output_files": output_files,
        "totalseg_version": __version__,
        "engine": engine,
        "warnings": list(warnings),
    }


def write_report(report: dict, path) -> Path:
    """Write ``report`` as the official does (``json.dump(indent=2)``), atomically; returns the path."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    return path
