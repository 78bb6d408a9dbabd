#!/usr/bin/env python3
"""Train the official 6 mm (``--fastest``) architecture on the real reference scans, on the CPU.

    python3 bench/train_fastest.py --work DIR [--epochs 50] [--iterations 6] [--batch_size 2]
        [--patch_size 80 80 80] [--trainer NAME] [--plans_from PLANS.json] [--device cpu]
        [--pretrained CHECKPOINT] [--resume] [--dry-run]

The four steps a user types, as functions: the reference CTs with the official models' masks
(``shared/data/totalseg_reference``: example_ct with example_seg_fast_force_split, example_ct_sm with
example_seg) become a TotalSegmentator-layout dataset, then an nnU-Net dataset (``total`` labels, id 998);
nnU-Net trains the 6 mm network (PlainConvUNet, 5 stages 32-64-128-256-320, patch 80³ at 6 mm: the official
Dataset298 architecture, written by bench/make_random_weights.py's ``official_configuration`` unless
``--plans_from`` gives the real plans.json); the result is imported into ``DIR/home`` as task
``total_fastest_bench``; ``TotalSegmentator -ta total_fastest_bench`` segments both scans and
``totalseg_evaluate`` scores them against the official masks. Results: DIR/results.json and DIR/eval/.

The scans are also the training data: this is a fit-to-data testbed (a network with realistic logit
margins for the fast engine's agreement checks), not a generalisation benchmark. On a CPU, train with
``--batch_size 1 --patch_size 64 64 64`` (the scans are at most 56x50x61 voxels at 6 mm; the official
batch of two 80³ patches costs 16-19 s an iteration on 2 cores, this 4-5 s). A run is stopped at any epoch
boundary and finished with ``--resume --epochs N`` (N: the epochs done): nnU-Net then writes the final
checkpoint without training further, and the import, segmentation and evaluation follow. SGD (nnU-Net's own)
learns these two scans slowly on a CPU (3 classes with Dice > 0.5 after 45 epochs of 40 steps); AdamW
(``--trainer nnUNetTrainerShortNoDABf16Adam --pretrained`` an SGD checkpoint) passed 20 within 8 epochs.
nnU-Net does not take the pretrained segmentation layers (they are learnt again). Figures: bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REFERENCE = ROOT.parent / "shared" / "data" / "totalseg_reference"
TEMPLATE = ROOT.parent / "shared" / "data" / "fake_weights_tiny" / "nnunet" / "results" / \
    "Dataset298_TotalSegmentator_total_6mm_1559subj" / "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
CASES = {"ct_full": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
         "ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz")}
DATASET_ID, TASK = 998, "total_fastest_bench"


def make_dataset(out: Path, classes: dict[int, str]) -> None:
    """The reference scans in the TotalSegmentator layout: one binary mask per class from each multilabel."""
    for case, (image, seg) in CASES.items():
        (out / case / "segmentations").mkdir(parents=True, exist_ok=True)
        img = nib.load(REFERENCE / image)
        nib.save(img, out / case / "ct.nii.gz")
        labels = np.asanyarray(nib.load(REFERENCE / seg).dataobj)
        for k, name in classes.items():
            mask = nib.Nifti1Image((labels == k).astype(np.uint8), img.affine)
            nib.save(mask, out / case / "segmentations" / f"{name}.nii.gz")
    # Both train; nnU-Net's validation case is then one of them (the testbed memorises these two scans).
    (out / "meta.csv").write_text("image_id;split\n" + "".join(f"{c};train\n" for c in CASES))


def official_plans(out: Path, plans_from: Path | None) -> Path:
    """The 6 mm plans: the given official plans.json, else the template's with the official architecture."""
    if plans_from is not None:
        return plans_from
    sys.path.insert(0, str(ROOT / "bench"))
    from make_random_weights import ARCHITECTURES, official_configuration

    plans = json.loads((TEMPLATE / "plans.json").read_text())
    n_stages, patch = ARCHITECTURES[298]
    conf = plans["configurations"]["3d_fullres"]
    plans["configurations"]["3d_fullres"] = official_configuration(conf, n_stages, patch)
    path = out / "official_6mm_plans.json"
    path.write_text(json.dumps(plans, indent=1))
    return path


def _epochs_trained(checkpoint: Path) -> tuple[int, float]:
    """Epochs in a final checkpoint and their seconds, from nnU-Net's own log in it (all resumed runs)."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    log = ckpt.get("logging", {})
    spans = zip(log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", []))
    return int(ckpt["current_epoch"]), sum(end - start for start, end in spans)


def _cli(module: str, *args, env: dict) -> None:
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env, cwd=ROOT)
    if r.returncode:
        sys.exit(f"{module} failed (exit {r.returncode})")


def _default_trainer(work: Path, device: str, resume: bool) -> str:
    """A resumed run's own trainer (its result folder's, the latest saved); else the bf16 one on a CPU with AMX."""
    if resume:
        found = (work / "nnUNet_results").glob(f"Dataset{DATASET_ID}_*/*__nnUNetPlans__3d_fullres/fold_0")
        latest = max(found, key=lambda f: (f / "checkpoint_latest.pth").stat().st_mtime
                     if (f / "checkpoint_latest.pth").is_file() else 0.0, default=None)
        if latest is not None:
            return latest.parent.name.split("__")[0]
    from totalseg.predict.fast_engine import default_precision

    amx = device == "cpu" and default_precision() == "bf16"
    return "nnUNetTrainerShortNoDABf16" if amx else "nnUNetTrainerShortNoDA"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="work folder (dataset, nnU-Net folders, home, eval)")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=6, help="iterations per epoch")
    ap.add_argument("--batch_size", type=int, default=None, help="default: the official plans' 2; 1 on a CPU")
    ap.add_argument("--patch_size", type=int, nargs=3, default=None, metavar="SIZE",
                    help="training patch (default: the official 80 80 80); 64 64 64 covers the 6 mm scans "
                         "here (56x50x61 voxels at most) in 2x fewer voxels")
    ap.add_argument("--trainer", default=None,
                    help="nnUNetTrainerShortNoDA (default: the testbed fits these two scans; no augmentation "
                         "process competes for the cores), nnUNetTrainerShortNoDABf16 (the same in bfloat16 "
                         "autocast: the default on a CPU with AMX, 2.3x faster a step there), or "
                         "nnUNetTrainerShortNoMirroring (the official models' augmentation)")
    ap.add_argument("--plans_from", type=Path, default=None, help="the official Dataset298 plans.json")
    ap.add_argument("--pretrained", type=Path, default=None,
                    help="start from this checkpoint's weights (e.g. an SGD run's checkpoint_latest.pth, "
                         "continued with --trainer nnUNetTrainerShortNoDABf16Adam)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    ap.add_argument("--dry-run", action="store_true", help="one epoch of two iterations")
    ap.add_argument("--resume", action="store_true",
                    help="go on from the last finished epoch of an earlier run in --work (same --epochs and "
                         "--iterations; the short trainer saves a checkpoint after every epoch)")
    args = ap.parse_args()
    if args.dry_run:
        args.epochs, args.iterations = 1, 2
    if args.trainer is None:
        args.trainer = _default_trainer(args.work.resolve(), args.device, args.resume)
    if args.resume and (args.batch_size, args.patch_size, args.plans_from, args.pretrained) != (None,) * 4:
        ap.error("--batch_size, --patch_size, --plans_from and --pretrained are set when a run starts; a resumed "
                 "run keeps them")
    if args.pretrained is not None and not args.pretrained.is_file():
        ap.error(f"no checkpoint at {args.pretrained}")
    import os

    from totalseg.registry import get_model
    from totalseg.train import convert_dataset, import_result, plan_and_preprocess, train

    work = args.work.resolve()
    os.environ["TOTALSEG_HOME_DIR"] = str(work / "home")  # also for the CLI children below
    env = dict(os.environ)
    classes = get_model(298).classes
    t0 = time.time()
    if not args.resume:
        make_dataset(work / "dataset", classes)
        convert_dataset(work / "dataset", work / "nnUNet_raw", DATASET_ID, "TotalFastestBench", classes,
                        meta=work / "dataset" / "meta.csv", say=print)
        plan_and_preprocess(work, DATASET_ID, plans_from=official_plans(work, args.plans_from),
                            batch_size=args.batch_size, patch_size=args.patch_size, processes=2, say=print,
                            quiet=True)
    t1 = time.time()
    result = train(work, DATASET_ID, trainer=args.trainer, device=args.device, pretrained=args.pretrained,
                   epochs=args.epochs, iterations=args.iterations, workers=1, resume=args.resume, say=print,
                   quiet=False)
    t2 = time.time()
    import_result(result, TASK, say=print)
    pred = work / "pred"
    for case in CASES:
        _cli("totalseg.cli.totalsegmentator", "-ta", TASK, "-i", work / "dataset" / case / "ct.nii.gz",
             "-o", pred / case, "-q", env=env)
    _cli("totalseg.cli.evaluate", "-p", pred, "-g", work / "dataset", "-o", work / "eval", "-ta", TASK, "-q",
         env=env)
    summary = (work / "eval" / "summary.csv").read_text().splitlines()
    overall = dict(zip(summary[0].split(","), summary[-1].split(",")))
    conf = json.loads((result / "plans.json").read_text())["configurations"]["3d_fullres"]
    epochs_done, epoch_s = _epochs_trained(result / "fold_0" / "checkpoint_final.pth")
    results = {"trainer": args.trainer, "epochs": epochs_done, "iterations_per_epoch": args.iterations,
               "device": args.device, "batch_size": conf["batch_size"], "patch_size": conf["patch_size"],
               "prepare_s": round(t1 - t0, 1), "train_s_this_call": round(t2 - t1, 1),
               "epochs_s_all_calls": round(epoch_s, 1),
               "dice_mean_of_classes": float(overall["dice_mean"]), "nsd_mean_of_classes": float(overall["nsd_mean"]),
               "classes_scored": int(overall["cases"])}
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
