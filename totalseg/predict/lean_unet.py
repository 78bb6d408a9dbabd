"""A U-Net forward pass that holds less memory at once and gives the same numbers.

nnU-Net's networks (dynamic-network-architectures) keep every skip connection and every
intermediate tensor alive until the forward pass returns, and produce the whole
``classes x patch`` output before it is weighted and added up. Here the same modules are called
in the same order on the same tensors, but each tensor is dropped as soon as nothing needs it,
and the 1x1x1 segmentation layer runs on slabs of the last feature map whose weighted output goes
straight into the fp16 sum; instance normalisation overwrites its input (torch's own batch-norm
kernel, which instance norm of one sample is). The arithmetic is torch's own; the slab split of
the 1x1x1 layer is checked against the whole layer once per shape (a convolution library may pick
another kernel for another size).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from totalseg.predict.kernel_checks import KernelChecks, machine_key

# Output slabs of the segmentation layer, along the first spatial axis.
SEG_SLAB = 16


def _instance_norm_in_place(norm, x):
    """``norm(x)`` for one sample, written over ``x``: instance norm of a batch of one is batch
    norm over (1, C, ...) with the batch statistics, the kernel torch itself ends up in."""
    import torch

    if x.shape[0] != 1 or not x.is_contiguous():
        return norm(x)
    c = x.shape[1]
    mean, invstd = x.new_empty(c), x.new_empty(c)
    torch.ops.aten.native_batch_norm.out(x, norm.weight, norm.bias, None, None, True, 0.0, norm.eps,
                                         out=x, save_mean=mean, save_invstd=invstd)
    return x


def _leaves(module) -> list:
    """The modules a block calls one after the other, flattened (None: not a plain chain)."""
    from torch import nn
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import (
        ConvDropoutNormReLU, StackedConvBlocks)

    if isinstance(module, nn.Sequential):
        out = []
        for child in module:
            sub = _leaves(child)
            if sub is None:
                return None
            out.extend(sub)
        return out
    if isinstance(module, StackedConvBlocks):
        return _leaves(module.convs)
    if isinstance(module, ConvDropoutNormReLU):
        return _leaves(module.all_modules)
    if (isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.affine
            and not module.track_running_stats):
        return [partial(_instance_norm_in_place, module)]
    if isinstance(module, (nn.modules.conv._ConvNd, nn.modules.instancenorm._InstanceNorm,
                           nn.LeakyReLU, nn.ReLU, nn.modules.pooling._MaxPoolNd,
                           nn.modules.pooling._AvgPoolNd, nn.modules.dropout._DropoutNd)):
        return [module]
    return None


class LeanUNet:
    """Wraps a dynamic-network-architectures U-Net (encoder + UNetDecoder, no deep supervision)."""

    def __init__(self, net, checks: KernelChecks | None = None):
        self.net = net
        self.checks = KernelChecks() if checks is None else checks
        encoder, decoder = net.encoder, net.decoder
        stages = [_leaves(s) for s in encoder.stages]
        self.encoder_stages = None if getattr(encoder, "stem", None) is not None or None in stages else stages
        self.decoder_stages = [_leaves(s) for s in decoder.stages]
        self.transpconvs = list(decoder.transpconvs)
        self.seg_layer = decoder.seg_layers[-1]

    @staticmethod
    def supports(net) -> bool:
        from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder

        decoder = getattr(net, "decoder", None)
        if not isinstance(decoder, UNetDecoder) or decoder.deep_supervision:
            return False
        if not all(_leaves(s) is not None for s in decoder.stages):
            return False
        k = decoder.seg_layers[-1].kernel_size
        return all(v == 1 for v in k)

    @staticmethod
    def _chain(modules: list, box: list):
        """Apply ``modules`` to the only tensor in ``box``, holding no other reference to it."""
        x = box.pop()
        for m in modules:
            x = m(x)
        return x

    def features(self, tile):
        """The last decoder feature map (1, C, *patch) for an input tile (1, channels, *patch)."""
        import torch

        if self.encoder_stages is None:
            skips = self.net.encoder(tile)
        else:
            skips, x = [], tile
            for stage in self.encoder_stages:
                x = self._chain(stage, [x])
                skips.append(x)
            del x
        low = skips.pop()
        for transpconv, stage in zip(self.transpconvs, self.decoder_stages):
            up = transpconv(low)
            del low
            box = [torch.cat((up, skips.pop()), 1)]
            del up
            low = self._chain(stage, box)
        return low

    def _slab_exact(self, features) -> bool:
        """Whether the segmentation layer on slabs equals it on the whole map (once per shape)."""
        import torch

        key = (f"{machine_key()}|seg {tuple(self.seg_layer.weight.shape)} on {tuple(features.shape)}"
               f"|slab {SEG_SLAB}")
        exact = self.checks.get(key)
        if exact is None:
            whole = self.seg_layer(features)
            exact = all(
                torch.equal(self.seg_layer(features[:, :, z:z + SEG_SLAB]), whole[:, :, z:z + SEG_SLAB])
                for z in range(0, features.shape[2], SEG_SLAB))
            del whole
            self.checks.put(key, exact)
        return exact

    def add_weighted(self, tile, weight, add: Callable) -> None:
        """Run the network on ``tile``; ``add(slab_index, weighted_output_slab)`` receives
        ``output * weight`` (float32, classes x slab) slab by slab along the first spatial axis."""
        features = self.features(tile)
        depth = features.shape[2]
        slab = SEG_SLAB if self._slab_exact(features) else depth
        for z in range(0, depth, slab):
            out = self.seg_layer(features[:, :, z:z + slab])[0]
            out *= weight[z:z + slab]
            add(slice(z, z + slab), out)
            del out
