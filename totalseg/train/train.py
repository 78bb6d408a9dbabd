"""Planning, preprocessing and training through nnU-Net v2 itself (the ``nnunetv2`` package, extra ``train``).

Everything lives in one work folder holding nnU-Net's three folders (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``); the environment variables nnU-Net reads are set for its processes here, so the user
never exports them. nnU-Net runs as a child process: it reads those variables at import time.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from totalseg.errors import UserError
from totalseg.predict.model import total_stride
from totalseg.write.atomic import write_atomic

Say = Callable[[str], None]
TRAINERS = Path(__file__).resolve().parent / "nnunet_trainers"
ENTRIES = {
    "fingerprint": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:extract_fingerprint_entry",
    "plan": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_experiment_entry",
    "preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:preprocess_entry",
    "plan_and_preprocess": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
    "train": "nnunetv2.run.run_training:run_training_entry",
}


def folders(work: Path) -> dict[str, Path]:
    """nnU-Net's raw, preprocessed and results folders inside ``work``."""
    work = Path(work)
    return {"nnUNet_raw": work / "nnUNet_raw", "nnUNet_preprocessed": work / "nnUNet_preprocessed",
            "nnUNet_results": work / "nnUNet_results"}


def require_nnunet() -> None:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise UserError("training needs nnU-Net v2: pip install 'totalseg[train]' (or pip install nnunetv2)") from None


def dataset_folder(root: Path, dataset_id: int) -> Path:
    """``root/Dataset<ID>_*`` (exactly one)."""
    found = sorted(Path(root).glob(f"Dataset{dataset_id:03d}_*"))
    if len(found) != 1:
        raise UserError(f"expected one Dataset{dataset_id:03d}_<name> folder in {root}, found {len(found)}; "
                        "convert the dataset first (totalseg_dataset)")
    return found[0]


def _env(work: Path, workers: int | None, extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in folders(work).items()})
    # Our short trainers; a user's own trainer folder stays searchable after ours.
    env["nnUNet_extTrainer"] = os.pathsep.join(p for p in (str(TRAINERS), env.get("nnUNet_extTrainer")) if p)
    if workers is not None:  # data-augmentation and export processes
        env["nnUNet_n_proc_DA"] = str(workers)
        env["nnUNet_def_n_proc"] = str(max(1, workers))
    env.update(extra or {})
    return env


def run_nnunet(step: str, args: list[str], work: Path, *, workers: int | None = None,
               extra_env: dict[str, str] | None = None, say: Say = lambda m: None, quiet: bool = False) -> None:
    """Run one nnU-Net command in a child process; its output goes to ``work/logs/<step>.log`` (and stderr)."""
    child = [sys.executable, "-m", "totalseg.train.nnunet_child", f"nnUNetv2_{step}", ENTRIES[step]]
    log = Path(work) / "logs" / f"{step}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"nnU-Net {step}: {' '.join(args)}")
    with open(log, "w") as out:
        proc = subprocess.Popen([*child, *args], env=_env(work, workers, extra_env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            out.write(line)
            if not quiet:
                sys.stderr.write(line)
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"nnU-Net {step} failed (exit {rc}): {tail[0][:300]}; full output in {log}")


def edit_plans(path: Path, configuration: str, max_features: int | None = None,
               batch_size: int | None = None, patch_size: list[int] | None = None) -> None:
    """Change the training of a configuration in place, not its preprocessing: cap the features per stage,
    set the batch size, set the patch size (each axis a multiple of the network's total stride)."""
    plans = json.loads(path.read_text())
    conf = plans["configurations"][configuration]
    if max_features is not None and "architecture" in conf:
        kwargs = conf["architecture"]["arch_kwargs"]
        kwargs["features_per_stage"] = [min(int(f), max_features) for f in kwargs["features_per_stage"]]
    elif max_features is not None:  # the legacy flat format of the v2 weight releases
        conf["unet_max_num_features"] = min(int(conf["unet_max_num_features"]), max_features)
        conf["UNet_base_num_features"] = min(int(conf["UNet_base_num_features"]), max_features)
    if batch_size is not None:
        if batch_size < 1:
            raise UserError(f"--batch_size must be at least 1 (got {batch_size})")
        conf["batch_size"] = int(batch_size)
    if patch_size is not None:
        conf["patch_size"] = _valid_patch(conf, patch_size)
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(plans, indent=1)))


def _valid_patch(conf: dict, patch_size: list[int]) -> list[int]:
    """``patch_size`` if the network can take it: one size per axis, each a positive multiple of the
    product of the pooling strides along it (a smaller one would not survive the encoder's downsampling)."""
    arch = conf.get("architecture")
    strides = arch["arch_kwargs"]["strides"] if arch else conf["pool_op_kernel_sizes"]
    ndim = len(conf["patch_size"])
    total = total_stride(strides, ndim)
    patch = [int(p) for p in patch_size]
    if len(patch) != ndim or any(p < 1 or p % t for p, t in zip(patch, total)):
        raise UserError(f"--patch_size needs {ndim} sizes, each a positive multiple of the network's total "
                        f"stride {'x'.join(map(str, total))} (got {'x'.join(map(str, patch))})")
    return patch


def adopt_plans(source: Path, target_dir: Path, dataset_name: str, plans_name: str) -> Path:
    """Copy a model's plans.json (architecture, spacing, intensity normalisation) as this dataset's plans."""
    plans = json.loads(Path(source).read_text())
    plans["dataset_name"], plans["plans_name"] = dataset_name, plans_name
    target = target_dir / f"{plans_name}.json"
    target_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(target, lambda tmp: tmp.write_text(json.dumps(plans, indent=1)))
    return target


def _check_configuration(plans: Path, configuration: str) -> None:
    if configuration not in json.loads(plans.read_text())["configurations"]:
        raise UserError(f"the plans {plans} have no configuration {configuration}")


def plan_and_preprocess(work: Path, dataset_id: int, *, configuration: str = "3d_fullres",
                        plans_name: str = "nnUNetPlans", plans_from: Path | None = None,
                        max_features: int | None = None, batch_size: int | None = None,
                        patch_size: list[int] | None = None, processes: int = 2,
                        say: Say = lambda m: None, quiet: bool = False) -> Path:
    """Fingerprint, plan (or adopt ``plans_from``, a model's plans.json), preprocess; return the plans file.
    ``max_features``, ``batch_size``, ``patch_size``: see :func:`edit_plans`."""
    require_nnunet()
    raw = dataset_folder(folders(work)["nnUNet_raw"], dataset_id)
    pre = folders(work)["nnUNet_preprocessed"] / raw.name
    ids, conf = ["-d", str(dataset_id)], ["-c", configuration]
    if plans_from is not None:
        run_nnunet("fingerprint", ids + ["-np", str(processes)], work, say=say, quiet=quiet)
        plans = adopt_plans(Path(plans_from), pre, raw.name, plans_name)
        shutil.copyfile(raw / "dataset.json", pre / "dataset.json")  # what nnU-Net's planner would copy
        _check_configuration(plans, configuration)
        run_nnunet("preprocess", ids + conf + ["-plans_name", plans_name, "-np", str(processes)], work, say=say,
                   quiet=quiet)
    else:  # one process for all three steps: nnU-Net's start-up takes seconds
        name = [] if plans_name == "nnUNetPlans" else ["-overwrite_plans_name", plans_name]
        run_nnunet("plan_and_preprocess", ids + conf + name + ["-npfp", str(processes), "-np", str(processes)],
                   work, say=say, quiet=quiet)
        plans = pre / f"{plans_name}.json"
        _check_configuration(plans, configuration)
    if (max_features, batch_size, patch_size) != (None, None, None):  # training only: not the preprocessing
        edit_plans(plans, configuration, max_features, batch_size, patch_size)
    if (raw / "splits_final.json").is_file():  # the paper's train/val split instead of nnU-Net's 5 folds
        shutil.copyfile(raw / "splits_final.json", pre / "splits_final.json")
    return plans


def preprocessed_plans(work: Path, dataset_id: int, plans_name: str = "nnUNetPlans") -> Path:
    """The plans file of an already preprocessed dataset."""
    raw = dataset_folder(folders(work)["nnUNet_raw"], dataset_id)
    plans = folders(work)["nnUNet_preprocessed"] / raw.name / f"{plans_name}.json"
    if not plans.is_file():
        raise UserError(f"{plans} does not exist: preprocess first (leave out --skip_preprocess)")
    return plans


def resume_from_latest(fold_dir: Path, say: Say = lambda m: None) -> None:
    """Make nnU-Net's ``--c`` go on from the last epoch saved.

    ``--c`` loads checkpoint_final.pth before checkpoint_latest.pth, and a finished run deletes its latest;
    so a latest newer than the final beside it was saved by a later ``--resume`` that stopped midway, and
    resuming again would silently restart from the final's earlier epoch. The final is set aside (renamed,
    not deleted) so that the run continues from the latest.
    """
    final, latest = fold_dir / "checkpoint_final.pth", fold_dir / "checkpoint_latest.pth"
    if final.is_file() and latest.is_file() and latest.stat().st_mtime > final.stat().st_mtime:
        kept = final.with_name("checkpoint_final_superseded.pth")
        os.replace(final, kept)
        say(f"Resuming from {latest} (saved after {final.name}, which is kept as {kept.name})")


def train(work: Path, dataset_id: int, *, configuration: str = "3d_fullres", trainer: str = "nnUNetTrainer",
          plans_name: str = "nnUNetPlans", fold: int | str = 0, device: str = "cpu",
          pretrained: Path | None = None, epochs: int | None = None, iterations: int | None = None,
          workers: int | None = None, resume: bool = False, say: Say = lambda m: None,
          quiet: bool = False) -> Path:
    """Train one fold with nnU-Net; return the result folder ``<Trainer>__<Plans>__<configuration>``.

    ``pretrained``: a checkpoint (e.g. an installed model's ``fold_0/checkpoint_final.pth``) to start from;
    its architecture must match the plans (adopt that model's plans with ``plan_and_preprocess(plans_from=)``).
    ``epochs``/``iterations``: for the short trainers (``nnUNetTrainerShort*``).
    """
    require_nnunet()
    if device not in ("cpu", "cuda", "mps"):
        raise UserError(f"device must be cpu, cuda or mps (got {device})")
    raw = dataset_folder(folders(work)["nnUNet_raw"], dataset_id)
    args = [str(dataset_id), configuration, str(fold), "-tr", trainer, "-p", plans_name, "-device", device]
    if pretrained is not None:
        if not Path(pretrained).is_file():
            raise UserError(f"the pretrained checkpoint does not exist: {pretrained}")
        args += ["-pretrained_weights", str(Path(pretrained).resolve())]
    result = folders(work)["nnUNet_results"] / raw.name / f"{trainer}__{plans_name}__{configuration}"
    if resume:
        resume_from_latest(result / f"fold_{fold}", say)
        args.append("--c")
    extra = {k: str(v) for k, v in (("TOTALSEG_EPOCHS", epochs), ("TOTALSEG_ITERATIONS", iterations))
             if v is not None}
    run_nnunet("train", args, work, workers=workers, extra_env=extra, say=say, quiet=quiet)
    if not (result / f"fold_{fold}" / "checkpoint_final.pth").is_file():
        raise UserError(f"nnU-Net finished without {result}/fold_{fold}/checkpoint_final.pth; see "
                        f"{Path(work) / 'logs' / 'train.log'}")
    return result
