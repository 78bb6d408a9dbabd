"""The start of nnU-Net's child processes: nnU-Net's own command, with a trainer lookup that imports only the
module that defines the trainer class.

nnU-Net finds a trainer by importing every module of its trainer package in turn until one has the class. One
of them (the Primus trainers) imports timm, and timm imports torchvision; next to the CPU build of torch,
PyPI's torchvision (a CUDA build) fails on import ("operator torchvision::nms does not exist"), so every
training would stop before it starts, whatever trainer it asked for. Reading the sources for ``class <name>``
finds the same class (nnU-Net's package first, then the ``nnUNet_extTrainer`` folders, as nnU-Net searches)
and imports that one module.

    python -m totalseg.train.nnunet_child <program name> <module>:<function> [nnU-Net's arguments]
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path


def _module_name(path: Path, folder: Path, package: str | None) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    return ".".join(([package] if package else []) + parts)


def _import(path: Path, folder: Path, package: str | None):
    name = _module_name(path, folder, package)
    if package is not None:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(f"nnunet_ext_trainer.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trainer_folders() -> list[tuple[Path, str | None]]:
    """(folder, dotted package or None for a plain folder) in nnU-Net's search order."""
    import nnunetv2

    folders: list[tuple[Path, str | None]] = [
        (Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer", "nnunetv2.training.nnUNetTrainer")]
    for entry in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep):
        if entry.strip() and Path(entry).is_dir():
            folders.append((Path(entry), None))
    return folders


def find_trainer(name: str):
    """The trainer class called ``name``, importing only the module whose source defines it (None if none)."""
    pattern = re.compile(rf"^class {re.escape(name)}\s*[(:]", re.MULTILINE)
    for folder, package in trainer_folders():
        for path in sorted(folder.rglob("*.py")):
            if pattern.search(path.read_text(errors="ignore")):
                return getattr(_import(path, folder, package), name, None)
    return None


def main() -> None:
    program, entry = sys.argv[1:3]
    sys.argv = [program, *sys.argv[3:]]
    from nnunetv2.utilities import find_objects

    nnunet_lookup = find_objects.recursive_find_trainer_class_by_name

    def lookup(name: str):
        return find_trainer(name) or nnunet_lookup(name)

    find_objects.recursive_find_trainer_class_by_name = lookup
    module, function = entry.split(":")
    target = importlib.import_module(module)
    if hasattr(target, "recursive_find_trainer_class_by_name"):  # bound by `from ... import` at import time
        target.recursive_find_trainer_class_by_name = lookup
    getattr(target, function)()


if __name__ == "__main__":
    main()
