"""OPS: operation name -> layer factory, the one place op names are known.

Names follow the BNAS reference: ``none`` (Zeroise), ``max_pool_3x3``,
``avg_pool_3x3``, ``bin_conv_3x3``, ``bin_conv_5x5``, ``bin_dil_conv_3x3``,
``bin_dil_conv_5x5`` (dilation 2), the separable ``bin_sep_conv_3x3/5x5`` for the
ablation, and BARS' ``shortcut``. Every op keeps ``channels`` channels and works at
stride 1 and 2.
"""
from __future__ import annotations

import dataclasses

from bnas_tf import binary

BNAS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "bin_dil_conv_3x3", "bin_dil_conv_5x5",
            "bin_conv_3x3", "bin_conv_5x5")
SEP_OPS = ("bin_sep_conv_3x3", "bin_sep_conv_5x5")
BARS_OPS = ("bin_conv_3x3", "shortcut", "none")
ZERO = "none"


@dataclasses.dataclass(frozen=True)
class OpConfig:
    """What an op needs besides its channels and stride.

    `affine`: affine BN inside binary convs (False in the search supernet);
    `pool_bn`: non-affine BN after pools (DARTS/BNAS search only);
    `op_shortcut`: BARS' op-level shortcut around each binary conv.
    """

    binarization: binary.Binarization = binary.XNOR
    affine: bool = True
    pool_bn: bool = False
    op_shortcut: bool = False


def _conv(kernel, dilation=1):
    def make(channels, stride, config, name=None):
        return binary.BinaryConv(channels, kernel, stride, dilation, config.binarization,
                                 affine=config.affine, shortcut=config.op_shortcut, name=name)
    return make


def _sep(kernel):
    def make(channels, stride, config, name=None):
        return binary.BinarySepConv(channels, kernel, stride, config.binarization,
                                    affine=config.affine, name=name)
    return make


def _pool(kind):
    def make(channels, stride, config, name=None):
        return binary.Pool(kind, 3, stride, batchnorm=config.pool_bn, name=name)
    return make


def _shortcut(channels, stride, config, name=None):
    if stride == 1:
        return binary.SkipConnect(name=name)
    return binary.BinaryDownsample(channels, "improved", config.binarization, name=name)


OPS = {
    "none": lambda channels, stride, config, name=None: binary.Zeroise(stride, name=name),
    "max_pool_3x3": _pool("max"),
    "avg_pool_3x3": _pool("avg"),
    "bin_conv_3x3": _conv(3),
    "bin_conv_5x5": _conv(5),
    "bin_dil_conv_3x3": _conv(3, 2),
    "bin_dil_conv_5x5": _conv(5, 2),
    "bin_sep_conv_3x3": _sep(3),
    "bin_sep_conv_5x5": _sep(5),
    "shortcut": _shortcut,
}
LEARNABLE = frozenset(name for name in OPS if name.startswith("bin_"))


def check_ops(names) -> tuple:
    """The op names as a tuple, or a one-line error naming the unknown one."""
    names = tuple(names)
    for name in names:
        if name not in OPS:
            raise ValueError(f"unknown op {name!r}; known ops: {', '.join(OPS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"op list has duplicates: {', '.join(names)}")
    if not names:
        raise ValueError("op list is empty")
    return names


def make(name, channels, stride=1, config=OpConfig(), layer_name=None):
    """Build op `name` with `channels` channels at `stride`."""
    check_ops([name])
    if stride not in (1, 2):
        raise ValueError(f"op {name}: stride must be 1 or 2, got {stride}")
    return OPS[name](channels, stride, config, name=layer_name)
