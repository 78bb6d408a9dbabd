"""A U-Net forward pass that holds less memory at once and gives the same numbers.

nnU-Net's networks (dynamic-network-architectures) keep every skip connection and every
intermediate tensor alive until the forward pass returns, concatenate skip and upsampled maps into
a new tensor, and produce the whole ``classes x patch`` output before it is weighted and added up.
Here the same layers run in the same order on the same values, but:

- each tensor is dropped as soon as nothing needs it;
- convolutions run on slabs of CONV_SLAB output slices along the first spatial axis (input halo
  included, zero-padded at the ends), so the concatenation and the convolution library's own
  re-layout copies exist only slab by slab;
- instance normalisation overwrites its input (torch's batch-norm kernel, which instance norm of
  one sample is);
- the 1x1x1 segmentation layer runs on slabs whose weighted output goes straight into the sum.

A convolution library may pick another kernel (another order of additions) for another size, so
each slab shortcut is compared with the whole layer, bit for bit, the first time a shape is met on
a machine (answers kept in the home, see kernel_checks); a shortcut that differs is not used.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterator

from totalseg.predict.kernel_checks import KernelChecks, machine_key

# Output slabs of the segmentation layer and of the 3x3x3 convolutions, along the first spatial axis.
SEG_SLAB = 16
CONV_SLAB = 8


def _concat(parts: list):
    """The channel concatenation of ``parts`` (emptied)."""
    import torch

    x = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
    parts.clear()
    return x


def _slab_kind(module) -> str | None:
    """'same' for a stride-1 convolution with centred padding along the first axis, 'up' for a
    transposed convolution whose kernel equals its stride there (each input slice makes its own
    output slices); None for anything else (computed whole)."""
    from torch import nn

    if type(module) is nn.Conv3d:
        k, st, pad = module.kernel_size[0], module.stride[0], module.padding
        if (st == 1 and k % 2 == 1 and not isinstance(pad, str) and pad[0] == (k - 1) // 2
                and module.dilation == (1, 1, 1) and module.groups == 1
                and module.padding_mode == "zeros"):
            return "same"
    if type(module) is nn.ConvTranspose3d:
        if (module.kernel_size[0] == module.stride[0] and module.padding == (0, 0, 0)
                and module.output_padding == (0, 0, 0) and module.dilation == (1, 1, 1) and module.groups == 1):
            return "up"
    return None


def _slab_conv(conv, parts: list):
    """``conv(cat(parts))`` computed for CONV_SLAB output slices at a time; the input slab (with
    its halo, zero rows past the volume's ends) is concatenated only slab by slab."""
    import torch
    import torch.nn.functional as F

    depth = parts[0].shape[2]
    if _slab_kind(conv) == "up":
        f = conv.stride[0]
        out = torch.empty((1, conv.out_channels, depth * f, *_up_shape(conv, parts[0].shape[3:])))
        for z0 in range(0, depth, CONV_SLAB):
            z1 = min(z0 + CONV_SLAB, depth)
            piece = torch.cat([t[:, :, z0:z1] for t in parts], 1)
            out[:, :, z0 * f:z1 * f] = conv(piece)
        return out
    p = conv.padding[0]
    spatial = parts[0].shape[3:]
    out = torch.empty((1, conv.out_channels, depth, *spatial))
    # One input buffer for all slabs: the parts are copied in side by side (the concatenation)
    # between zero rows where the halo runs past the volume's ends (the padding).
    piece = torch.empty((1, sum(t.shape[1] for t in parts), CONV_SLAB + 2 * p, *spatial))
    for z0 in range(0, depth, CONV_SLAB):
        z1 = min(z0 + CONV_SLAB, depth)
        lo, hi = max(z0 - p, 0), min(z1 + p, depth)
        rows = z1 - z0 + 2 * p
        before = p - (z0 - lo)
        after = before + hi - lo
        view = piece[:, :, :rows]
        view[:, :, :before] = 0
        view[:, :, after:] = 0
        c = 0
        for t in parts:
            view[:, c:c + t.shape[1], before:after] = t[:, :, lo:hi]
            c += t.shape[1]
        out[:, :, z0:z1] = F.conv3d(view, conv.weight, conv.bias, 1, (0, *conv.padding[1:]))
    return out


def _up_shape(conv, spatial) -> tuple[int, ...]:
    """In-plane output size of a transposed convolution (no padding)."""
    return tuple((n - 1) * s + k for n, s, k in zip(spatial, conv.stride[1:], conv.kernel_size[1:]))


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

    def _chain(self, modules: list, parts: list):
        """Apply ``modules`` to the channel concatenation of the tensors in ``parts`` (taken out of
        the list, so no other reference keeps them alive)."""
        x = self._conv(modules[0], parts) if _slab_kind(modules[0]) else modules[0](_concat(parts))
        for m in modules[1:]:
            x = self._conv(m, [x]) if _slab_kind(m) else m(x)
        return x

    def _conv(self, conv, parts: list):
        """``conv(cat(parts))`` computed slab by slab along the first spatial axis when that was found
        to give the same numbers (checked once against the whole convolution), else whole."""
        import torch

        depth = parts[0].shape[2]
        if depth <= CONV_SLAB:
            return conv(_concat(parts))
        shapes = "+".join(str(tuple(t.shape)) for t in parts)
        key = f"{machine_key()}|{_slab_kind(conv)} {tuple(conv.weight.shape)} on {shapes}|slab {CONV_SLAB}"
        exact = self.checks.get(key)
        if exact is None:
            mine = _slab_conv(conv, parts)
            whole = conv(_concat(parts))
            exact = torch.equal(mine, whole)
            self.checks.put(key, exact)
            return whole
        if exact:
            out = _slab_conv(conv, parts)
            parts.clear()
            return out
        return conv(_concat(parts))

    def features(self, tile):
        """The last decoder feature map (1, C, *patch) for an input tile (1, channels, *patch)."""
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
            parts = [low]
            del low
            up = self._conv(transpconv, parts) if _slab_kind(transpconv) else transpconv(parts.pop())
            parts = [up, skips.pop()]  # concatenated slab by slab by the stage's first convolution
            del up
            low = self._chain(stage, parts)
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

    def weighted_slabs(self, tile, weight) -> Iterator[tuple[slice, Any]]:
        """Run the network on ``tile`` (1, channels, *patch); yields ``(z, output[:, z] * weight[z])``
        (float32, classes x slab) slab by slab along the first spatial axis."""
        features = self.features(tile)
        slab = SEG_SLAB if self._slab_exact(features) else features.shape[2]
        return weighted_head_slabs(features, self.seg_layer, weight, slab)


def weighted_head_slabs(features, seg_layer, weight, slab: int = SEG_SLAB) -> Iterator[tuple[slice, Any]]:
    """``(z, seg_layer(features)[0, :, z] * weight[z])`` slab by slab along the first spatial axis, so the
    classes x patch output of a tile never exists whole (118 classes of a 3 mm tile: 760 MB in float32)."""
    depth = features.shape[2]
    for z in range(0, depth, slab):
        out = seg_layer(features[:, :, z:z + slab])[0]
        out *= weight[z:z + slab]
        yield slice(z, min(z + slab, depth)), out
        del out
