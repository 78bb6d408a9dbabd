"""Score predictions against a ground truth dataset: Dice and NSD per case and class, summaries and a plot.

Ground truth: the TotalSegmentator layout (``<case>/segmentations/<class>.nii.gz``). Predictions: per-case
folders of masks as ``TotalSegmentator`` writes them (``<case>/<class>.nii.gz``) or per-case multilabel files
(``<case>.nii.gz`` with the label table). Distances use the spacing in the ground truth's header.
A class absent from a case's ground truth gets NaN (left out of the means, as the official evaluation does)
and, when predicted there anyway, a ``false_positive`` mark.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from totalseg.errors import UserError
from totalseg.evaluate.metrics import dice, nsd
from totalseg.write.atomic import write_atomic

Say = Callable[[str], None]
COLUMNS = ["case_id", "class", "dice", "nsd", "gt_voxels", "pred_voxels", "false_positive"]


def select_cases(gt: Path, split: str | None, meta: Path | None) -> list[str]:
    """The ground-truth cases, limited to one split of meta.csv when asked."""
    from totalseg.train.dataset import read_meta

    cases = sorted(p.name for p in gt.iterdir() if (p / "segmentations").is_dir())
    if not cases:
        raise UserError(f"no cases in {gt}: expected <case>/segmentations/<class>.nii.gz")
    if split is None:
        return cases
    meta = meta or gt / "meta.csv"
    if not Path(meta).is_file():
        raise UserError(f"--split needs a meta.csv (--meta); {meta} does not exist")
    split_of = read_meta(Path(meta))
    chosen = [c for c in cases if split_of.get(c) == split]
    if not chosen:
        raise UserError(f"no ground-truth case of {gt} has split '{split}' in {meta}")
    return chosen


def _gt_classes(gt: Path, cases: list[str]) -> list[str]:
    names = {p.name[:-7] for c in cases for p in (gt / c / "segmentations").glob("*.nii.gz")}
    return sorted(names)


class _Prediction:
    """One case's predicted masks, from a folder of masks or a multilabel file."""

    def __init__(self, pred: Path, case: str, labels: dict[int, str] | None):
        self.folder = pred / case
        self.multilabel = None
        if not self.folder.is_dir():
            path = pred / f"{case}.nii.gz"
            if not path.is_file():
                raise UserError(f"no prediction for case {case}: neither {self.folder}/ nor {path}")
            self._load_multilabel(path, labels)

    def _load_multilabel(self, path: Path, labels: dict[int, str] | None) -> None:
        from totalseg.errors import InputError
        from totalseg.write.labelmap import load_multilabel_nifti

        try:
            img, table = load_multilabel_nifti(path)
        except InputError:
            if labels is None:
                raise UserError(f"{path} has no label table; give the task (-ta) to name its labels") from None
            img, table = nib.load(path), labels
        self.multilabel = np.asanyarray(img.dataobj)
        self.ids = {name: k for k, name in table.items()}

    def mask(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if self.multilabel is not None:
            data = self.multilabel == self.ids[name] if name in self.ids else np.zeros(shape, bool)
        else:
            path = self.folder / f"{name}.nii.gz"
            data = np.asanyarray(nib.load(path).dataobj) > 0 if path.is_file() else np.zeros(shape, bool)
        if data.shape != shape:
            raise UserError(f"the prediction of {name} in {self.folder.name} has shape {data.shape}, "
                            f"the ground truth {shape}; predict on the ground truth's images")
        return data


def _geometry(gt: Path, case: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and spacing (mm) of a case's ground truth, from the header of its first mask."""
    ref = next((gt / case / "segmentations").glob("*.nii.gz"), None)
    if ref is None:
        raise UserError(f"{gt / case / 'segmentations'} holds no masks")
    img = nib.load(ref)
    return img.shape[:3], tuple(float(s) for s in img.header.get_zooms()[:3])


def score_case(gt: Path, pred: _Prediction, case: str, classes: list[str], tolerance: float) -> list[dict]:
    """One row per class: Dice, NSD at ``tolerance`` mm, voxel counts, false positive mark."""
    shape, spacing = _geometry(gt, case)
    rows = []
    for name in classes:
        path = gt / case / "segmentations" / f"{name}.nii.gz"
        # A class the annotators did not draw in this case counts as absent.
        g = np.asanyarray(nib.load(path).dataobj) > 0 if path.is_file() else np.zeros(shape, bool)
        p = pred.mask(name, g.shape)
        absent = not g.any()
        rows.append({"case_id": case, "class": name,
                     "dice": math.nan if absent else dice(g, p),
                     "nsd": math.nan if absent else nsd(g, p, spacing, tolerance),
                     "gt_voxels": int(g.sum()), "pred_voxels": int(p.sum()),
                     "false_positive": bool(absent and p.any())})
    return rows


def summarise(rows: list[dict], classes: list[str]) -> list[dict]:
    """Per class: cases scored, mean, median and quartiles of Dice and NSD, false positives; then the mean."""
    out = []
    for name in classes:
        mine = [r for r in rows if r["class"] == name]
        row = {"class": name, "cases": sum(not math.isnan(r["dice"]) for r in mine)}
        for metric in ("dice", "nsd"):
            v = np.array([r[metric] for r in mine if not math.isnan(r[metric])])
            stats = (np.mean(v), np.median(v), *np.percentile(v, [25, 75])) if v.size else (math.nan,) * 4
            row.update({f"{metric}_{k}": float(x) for k, x in zip(("mean", "median", "q1", "q3"), stats)})
        row["false_positive_cases"] = sum(r["false_positive"] for r in mine)
        out.append(row)
    scored = [r for r in out if r["cases"]]
    if scored:  # the paper's headline: the mean over classes of the per-class means
        out.append({"class": "ALL (mean of classes)", "cases": len(scored),
                    **{k: float(np.mean([r[k] for r in scored])) for k in out[0] if k.endswith(("mean", "median",
                                                                                                 "q1", "q3"))},
                    "false_positive_cases": sum(r["false_positive_cases"] for r in out)})
    return out


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_atomic(path, write)


def _write_markdown(path: Path, summary: list[dict], tolerance: float, n_cases: int) -> None:
    lines = [f"# Evaluation: {n_cases} case(s), NSD at {tolerance:g} mm", "",
             "| class | cases | Dice mean | Dice median | Dice IQR | NSD mean | NSD median | NSD IQR | FP cases |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['class']} | {r['cases']} | {r['dice_mean']:.4f} | {r['dice_median']:.4f} | "
                     f"{r['dice_q1']:.4f}-{r['dice_q3']:.4f} | {r['nsd_mean']:.4f} | {r['nsd_median']:.4f} | "
                     f"{r['nsd_q1']:.4f}-{r['nsd_q3']:.4f} | {r['false_positive_cases']} |")
    write_atomic(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def plot(path: Path, rows: list[dict], classes: list[str], tolerance: float) -> bool:
    """Box plots of Dice and NSD per class (PNG); False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(classes) + 2), 7), sharex=True)
    for ax, metric in zip(axes, ("dice", "nsd")):
        data = [[r[metric] for r in rows if r["class"] == c and not math.isnan(r[metric])] for c in classes]
        ax.boxplot([d or [math.nan] for d in data])
        ax.set_ylabel("Dice" if metric == "dice" else f"NSD ({tolerance:g} mm)")
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(1, len(classes) + 1), classes, rotation=90, fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return True


def evaluate(pred: Path, gt: Path, output: Path, *, split: str | None = None, meta: Path | None = None,
             task: str | None = None, tolerance: float = 3.0, say: Say = lambda m: None,
             progress: bool = True) -> list[dict]:
    """Score ``pred`` against ``gt``; write per_case.csv, summary.csv, summary.md and summary.png to ``output``."""
    from tqdm import tqdm

    pred, gt, output = Path(pred), Path(gt), Path(output)
    for what, p in (("prediction", pred), ("ground truth", gt)):
        if not p.is_dir():
            raise UserError(f"the {what} folder does not exist: {p}")
    cases = select_cases(gt, split, meta)
    labels = None
    if task is not None:
        from totalseg.registry import get_task
        labels = dict(get_task(task).classes)
    classes = list(labels.values()) if labels else _gt_classes(gt, cases)
    rows = []
    for case in tqdm(cases, desc="Evaluating", unit="case", disable=not progress):
        rows += score_case(gt, _Prediction(pred, case, labels), case, classes, tolerance)
    summary = summarise(rows, classes)
    output.mkdir(parents=True, exist_ok=True)
    _write_csv(output / "per_case.csv", rows, COLUMNS)
    _write_csv(output / "summary.csv", summary, list(summary[0]))
    _write_markdown(output / "summary.md", summary, tolerance, len(cases))
    if not plot(output / "summary.png", rows, classes, tolerance):
        say("matplotlib is not installed: no plot (pip install matplotlib)")
    return summary
