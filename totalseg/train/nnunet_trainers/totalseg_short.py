"""Short nnU-Net training runs: the stock trainer with fewer epochs and iterations.

The lengths come from the environment (set by ``totalseg_train --epochs/--iterations``) because nnU-Net
builds the trainer itself from its class name.
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA
from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerAdam


class nnUNetTrainerShort(nnUNetTrainer):
    """nnUNetTrainer with ``TOTALSEG_EPOCHS`` epochs of ``TOTALSEG_ITERATIONS`` iterations (tests, dry runs)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("TOTALSEG_EPOCHS", "2"))
        self.num_iterations_per_epoch = int(os.environ.get("TOTALSEG_ITERATIONS", "5"))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 5)
        # checkpoint_latest.pth after every epoch (nnU-Net: every 50), so that a long CPU run stopped midway
        # (a session's end) goes on from its last epoch with totalseg_train --resume (nnU-Net's --c).
        self.save_every = 1


class nnUNetTrainerShortNoMirroring(nnUNetTrainerShort):
    """The short trainer without mirroring augmentation, like the official NoMirroring models."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rot, dummy_2d, patch, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rot, dummy_2d, patch, None


class nnUNetTrainerShortNoDA(nnUNetTrainerShort, nnUNetTrainerNoDA):
    """The short trainer with nnU-Net's NoDA variant (no augmentation, no mirroring at inference): fitting a
    few scans as quickly as a CPU allows (bench/train_fastest.py's testbed), no augmentation process
    competing with the training for the cores."""


class nnUNetTrainerShortNoDABf16(nnUNetTrainerShortNoDA):
    """The short NoDA trainer in bfloat16 autocast on a CPU (nnU-Net autocasts only on CUDA): on CPUs with AMX
    a training step of the 6 mm network costs 2.3x less (64³ batch 1, 2 cores: 1.2 s instead of 2.7 s).
    Weights, gradients and the optimizer stay float32; elsewhere than a CPU it is the NoDA trainer."""

    def _bf16(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.device.type == "cpu")

    def train_step(self, batch: dict) -> dict:
        with self._bf16():
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        with self._bf16():
            return super().validation_step(batch)


class nnUNetTrainerShortNoDABf16Adam(nnUNetTrainerShortNoDABf16):
    """The short bf16 NoDA trainer with nnU-Net's AdamW variant (learning rate 1e-3, AMSGrad, poly decay):
    fitting a few scans in far fewer steps than SGD's. Started from an SGD run's checkpoint
    (``-pretrained_weights``), it takes bench/train_fastest.py's testbed past the classes SGD had learnt."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3

    def configure_optimizers(self):
        return nnUNetTrainerAdam.configure_optimizers(self)
