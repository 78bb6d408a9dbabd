"""BENCH_CUDNN_DETERMINISTIC=1 (run.sh's agreement check): cuDNN's deterministic algorithms and no benchmark mode,
for the official tool's and our runs alike.

nnU-Net's predictor (and ours, to match it) turns on ``torch.backends.cudnn.benchmark``: cuDNN then times several
convolution algorithms per shape and keeps the fastest, a choice that can change from one run to the next, and
different algorithms round fp16 differently. That makes the official tool disagree with itself between runs. With
the choice pinned, two runs that do the same arithmetic must give the same labels. Both tools still *set* the
flag; the setter is made a no-op so the pin holds.
"""
import os


def pin() -> None:
    if os.environ.get("BENCH_CUDNN_DETERMINISTIC") != "1":
        return
    import torch

    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    type(torch.backends.cudnn).benchmark = property(lambda self: False, lambda self, value: None)
