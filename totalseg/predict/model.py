"""Read an nnU-Net v2 result folder (plans.json, dataset.json, fold_<k>/checkpoint_final.pth).

Both plans generations are understood: the legacy flat keys of every TotalSegmentator v2 weight
release, and the ``architecture`` object of nnU-Net >= 2.2. The network itself is built by
dynamic-network-architectures, whose parameter names are the checkpoints' own.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from totalseg.errors import WeightsError

CHECKPOINT = "checkpoint_final.pth"


def total_stride(strides, ndim: int) -> list[int]:
    """The product of a U-Net encoder's strides along each axis (a stride is one int for all axes or one per
    axis): patch sizes must be multiples of it."""
    total = [1] * ndim
    for stride in strides:
        per_axis = stride if isinstance(stride, (list, tuple)) else [stride] * ndim
        total = [t * int(s) for t, s in zip(total, per_axis)]
    return total


@dataclass(frozen=True)
class Plans:
    """What inference needs from one configuration of plans.json (+ dataset.json)."""

    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]  # nnU-Net axis order (z, y, x after transpose_forward)
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    normalization: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: dict[str, dict[str, float]]
    resampling_data: dict[str, Any]
    resampling_probabilities: dict[str, Any]
    network_class: str
    network_kwargs: dict[str, Any]
    requires_import: tuple[str, ...]
    num_input_channels: int
    labels: dict[str, int]
    regions_class_order: tuple[int, ...] | None = None

    @property
    def num_heads(self) -> int:
        """Output channels: labels incl. background (nnU-Net's num_segmentation_heads)."""
        if self.regions_class_order is not None:
            return len(self.regions_class_order)
        return len(self.labels)


_LEGACY_NETWORKS = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}


def _configuration(plans: dict, name: str) -> dict:
    """A configuration with its ``inherits_from`` chain resolved (e.g. 3d_fullres_high)."""
    configs = plans["configurations"]
    if name not in configs:
        raise WeightsError(f"plans.json has no configuration '{name}' (has: {', '.join(configs)})")
    conf = dict(configs[name])
    parent = conf.pop("inherits_from", None)
    if parent is not None:
        base = _configuration(plans, parent)
        base.update(conf)
        conf = base
    return conf


def _legacy_architecture(conf: dict) -> tuple[str, dict, tuple[str, ...]]:
    """Translate the flat nnU-Net 2.0/2.1 keys into network class + keyword arguments."""
    unet = conf["UNet_class_name"]
    if unet not in _LEGACY_NETWORKS:
        raise WeightsError(f"unsupported network class '{unet}' in plans.json")
    n_stages = len(conf["conv_kernel_sizes"])
    dim = len(conf["patch_size"])
    base = conf["UNet_base_num_features"]
    cap = conf["unet_max_num_features"]
    kwargs = {
        "n_stages": n_stages,
        "features_per_stage": [min(base * 2**i, cap) for i in range(n_stages)],
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": conf["conv_kernel_sizes"],
        "strides": conf["pool_op_kernel_sizes"],
        "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"],
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if unet == "PlainConvUNet":
        kwargs["n_conv_per_stage"] = conf["n_conv_per_stage_encoder"]
    else:
        kwargs["n_blocks_per_stage"] = conf["n_conv_per_stage_encoder"]
    return _LEGACY_NETWORKS[unet], kwargs, ("conv_op", "norm_op", "dropout_op", "nonlin")


def read_plans(folder: Path, configuration: str) -> Plans:
    """Parse plans.json and dataset.json of a result folder for one configuration."""
    try:
        plans = json.loads((folder / "plans.json").read_text())
        dataset = json.loads((folder / "dataset.json").read_text())
    except FileNotFoundError as e:
        raise WeightsError(f"model folder {folder} is incomplete: {Path(e.filename).name} is missing; "
                           "download the weights again (totalseg_download_weights)") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"model folder {folder} has a corrupt json file ({e}); download the weights again") from None
    conf = _configuration(plans, configuration)
    if "architecture" in conf:
        arch = conf["architecture"]
        net_class, net_kwargs = arch["network_class_name"], dict(arch["arch_kwargs"])
        requires = tuple(arch.get("_kw_requires_import", ()))
    else:
        net_class, net_kwargs, requires = _legacy_architecture(conf)
    regions = dataset.get("regions_class_order")
    return Plans(
        patch_size=tuple(int(x) for x in conf["patch_size"]),
        spacing=tuple(float(x) for x in conf["spacing"]),
        transpose_forward=tuple(plans.get("transpose_forward", range(len(conf["spacing"])))),
        transpose_backward=tuple(plans.get("transpose_backward", range(len(conf["spacing"])))),
        normalization=tuple(conf["normalization_schemes"]),
        use_mask_for_norm=tuple(bool(x) for x in conf["use_mask_for_norm"]),
        intensity_properties=plans.get("foreground_intensity_properties_per_channel", {}),
        resampling_data=dict(conf.get("resampling_fn_data_kwargs", {})),
        resampling_probabilities=dict(conf.get("resampling_fn_probabilities_kwargs", {})),
        network_class=net_class,
        network_kwargs=net_kwargs,
        requires_import=requires,
        num_input_channels=len(dataset.get("channel_names", dataset.get("modality", {"0": ""}))),
        labels={k: v for k, v in dataset["labels"].items()},
        regions_class_order=None if regions is None else tuple(regions),
    )


def _import(path: str):
    module, _, name = path.rpartition(".")
    # nnU-Net's legacy converter names a module that newer DNA releases moved.
    module = module.replace("architectures.residual_unet", "architectures.unet")
    return getattr(importlib.import_module(module), name)


def build_network(plans: Plans):
    """The network described by the plans, in eval mode, on the CPU."""
    kwargs = dict(plans.network_kwargs)
    for key in plans.requires_import:
        if kwargs.get(key) is not None:
            kwargs[key] = _import(kwargs[key])
    cls = _import(plans.network_class)
    net = cls(input_channels=plans.num_input_channels, num_classes=plans.num_heads,
              deep_supervision=False, **kwargs)
    return net.eval()


def fold_folders(folder: Path, folds: tuple[int, ...] | None) -> list[Path]:
    """The fold folders to use; ``None`` means every ``fold_<k>`` with a final checkpoint."""
    if folds is None:
        found = sorted((p for p in folder.glob("fold_*") if (p / CHECKPOINT).is_file()),
                       key=lambda p: p.name)
        if not found:
            raise WeightsError(f"no fold_*/{CHECKPOINT} in {folder}; download the weights again")
        return found
    return [folder / f"fold_{k}" for k in folds]


def load_state_dict(path: Path) -> dict:
    """``network_weights`` of a checkpoint, without a DDP ``module.`` prefix."""
    import torch

    if not path.is_file():
        raise WeightsError(f"checkpoint missing: {path}; download the weights again (totalseg_download_weights)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise WeightsError(f"cannot read checkpoint {path} ({type(e).__name__}); download the weights again") from None
    weights = ckpt.get("network_weights") if isinstance(ckpt, dict) else None
    if weights is None:
        raise WeightsError(f"checkpoint {path} has no network_weights; is it an nnU-Net v2 checkpoint?")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in weights.items()}


@dataclass
class LoadedModel:
    """A network ready to run, with the plans that say how to feed it; one entry per fold."""

    folder: Path
    plans: Plans
    networks: list = field(default_factory=list)
    kernel_checks: Path | None = None  # where answers about exact shortcuts are kept (kernel_checks.py)


def load_model(folder: Path, configuration: str, folds: tuple[int, ...] | None) -> LoadedModel:
    plans = read_plans(folder, configuration)
    networks = []
    for fold in fold_folders(folder, folds):
        net = build_network(plans)
        state = load_state_dict(fold / CHECKPOINT)
        missing, unexpected = net.load_state_dict(state, strict=False)
        # Checkpoints carry duplicate aliases (decoder.encoder.*, all_modules.*) that DNA also has;
        # a truly missing parameter means the plans and the weights disagree.
        if missing:
            raise WeightsError(f"checkpoint {fold / CHECKPOINT} does not fit its plans.json "
                               f"(missing {missing[0]}...); download the weights again")
        networks.append(net)
    return LoadedModel(folder=folder, plans=plans, networks=networks)
