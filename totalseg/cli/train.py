"""``totalseg_train``: plan, preprocess and train a converted dataset with nnU-Net v2, then import the model.

nnU-Net (``pip install 'totalseg[train]'``) does the work; its folders live in the work folder and its
environment variables are set here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from totalseg.cli.common import progress, run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_train", description=(
        "Train a dataset converted by totalseg_dataset with nnU-Net v2; --task imports the result into the "
        "weights home so that `TotalSegmentator -ta TASK` runs it."))
    a = p.add_argument
    a("-w", "--work", type=Path, required=True, help="work folder of totalseg_dataset -o")
    a("-d", "--dataset_id", type=int, required=True, help="nnU-Net dataset id")
    a("-tr", "--trainer", default="nnUNetTrainerNoMirroring",
      help="nnU-Net trainer class, e.g. nnUNetTrainerNoMirroring (official total parts), "
           "nnUNetTrainer_4000epochs_NoMirroring (fast models), nnUNetTrainerShort (a few iterations)")
    a("-c", "--configuration", default="3d_fullres", help="nnU-Net configuration (default 3d_fullres)")
    a("-p", "--plans", default="nnUNetPlans", help="plans name (default nnUNetPlans)")
    a("-f", "--fold", default="0", help="fold (0 = the train/val split of meta.csv)")
    a("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="training device (default cpu)")
    a("--finetune", metavar="TASK_OR_FOLDER", default=None,
      help="start from a model: an installed task (its single model) or a result folder; its plans "
           "(architecture, spacing, normalisation) are adopted")
    a("--plans_from", type=Path, default=None, help="adopt this plans.json (e.g. an official model's)")
    a("--max_features", type=int, default=None, help="cap the features per stage (small test networks)")
    a("--batch_size", type=int, default=None, help="override the planned batch size")
    a("--patch_size", type=int, nargs="+", default=None, metavar="SIZE",
      help="override the planned patch size (one size per axis, in the plans' axis order)")
    a("--epochs", type=int, default=None, help="epochs of the nnUNetTrainerShort* trainers")
    a("--iterations", type=int, default=None, help="iterations per epoch of the nnUNetTrainerShort* trainers")
    a("--workers", type=int, default=None, help="data augmentation processes (default: nnU-Net's)")
    a("-np", "--processes", type=int, default=2, help="preprocessing processes (default 2)")
    a("--skip_preprocess", action="store_true", help="the dataset is preprocessed already")
    a("--resume", action="store_true", help="continue from the latest checkpoint")
    a("-ta", "--task", default=None, help="import the trained model as this custom task")
    a("--modality", default="ct", choices=["ct", "mr"], help="modality of the custom task (default ct)")
    a("-q", "--quiet", action="store_true", help="only errors (nnU-Net's output still goes to <work>/logs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), interrupted="interrupted; resume with --resume --skip_preprocess")


def _run(args) -> int:
    from totalseg.errors import UserError
    from totalseg.train import import_result, plan_and_preprocess, pretrained_from, train
    from totalseg.train.train import edit_plans, preprocessed_plans

    say = progress(args.quiet)
    plans_from, pretrained = args.plans_from, None
    if args.finetune and (args.plans_from or args.max_features):
        raise UserError("--finetune adopts the model's plans: drop --plans_from and --max_features")
    if args.finetune:
        plans_from, pretrained = pretrained_from(args.finetune, args.configuration)
        say(f"Fine-tuning from {pretrained}")
    edits = {"max_features": args.max_features, "batch_size": args.batch_size, "patch_size": args.patch_size}
    if not args.skip_preprocess:
        plan_and_preprocess(args.work, args.dataset_id, configuration=args.configuration, plans_name=args.plans,
                            plans_from=plans_from, processes=args.processes, say=say, quiet=args.quiet, **edits)
    elif args.plans_from:
        raise UserError("--plans_from changes the preprocessing: leave out --skip_preprocess")
    elif any(v is not None for v in edits.values()):  # they change the training only: applied in place
        edit_plans(preprocessed_plans(args.work, args.dataset_id, args.plans), args.configuration, **edits)
    result = train(args.work, args.dataset_id, configuration=args.configuration, trainer=args.trainer,
                   plans_name=args.plans, fold=args.fold, device=args.device, pretrained=pretrained,
                   epochs=args.epochs, iterations=args.iterations, workers=args.workers, resume=args.resume,
                   say=say, quiet=args.quiet)
    say(f"Trained: {result}")
    if args.task:
        import_result(result, args.task, modality=args.modality, say=say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
