"""Engine knobs of a search: how it is computed, never what (the paper-level settings
are `SearchConfig`'s). Resolved once, by `EngineConfig.resolve`, before the supernet
is built; not part of a search directory's identity, except the cell implementation
(the two cells hold their variables differently).

* ``cell``: ``fused`` (default; bnas/fused.py and bars/fused.py, the grouped fast
  cells) or ``reference`` (bnas/cell.py, bars/cell.py, the specifications, slower).
* ``conv_dtype``: dtype of the fused cell's +-1 conv products: ``auto`` (bfloat16 on
  CPUs that multiply it natively, else float32), ``float32`` or ``bfloat16``.
* ``lean_grappler``: optimise the traced step with `grappler.lean` (docs/benchmark.md).
* ``intra_op_threads`` / ``inter_op_threads``: TensorFlow's thread pools (0 = default).
"""
from __future__ import annotations

import dataclasses

CELLS = ("fused", "reference")
CONV_DTYPES = ("auto", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    cell: str = "fused"
    conv_dtype: str = "auto"
    lean_grappler: bool = True
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    # BARS, fused cell: the first N stages' cells recompute their forward pass in the
    # backward pass (bars/recompute.py): less memory for one more forward pass of them
    recompute_stages: int = 0

    def validate(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell implementation {self.cell!r}; "
                             f"choose one of {', '.join(CELLS)}")
        if self.conv_dtype not in CONV_DTYPES:
            raise ValueError(f"unknown conv_dtype {self.conv_dtype!r}; choose one of "
                             f"{', '.join(CONV_DTYPES)}")
        for name in ("intra_op_threads", "inter_op_threads", "recompute_stages"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        return self

    def check_for(self, config):
        """Self, or a one-line ValueError when this engine cannot run the search of
        `config` (a SearchConfig; `check_recompute`). Checked before a search reads data
        or writes anything."""
        stages = len(config.settings.base_channels) if config.method == "bars" else 0
        check_recompute(self.recompute_stages, config.method, self.cell, stages)
        return self

    def resolve(self):
        """A copy with ``conv_dtype`` 'auto' replaced by this machine's choice
        (`native_bfloat16`), and the thread pools applied (before TensorFlow runs)."""
        self.validate()
        conv_dtype = self.conv_dtype
        if conv_dtype == "auto":
            conv_dtype = "bfloat16" if native_bfloat16() else "float32"
        configure_threads(self.intra_op_threads, self.inter_op_threads)
        return dataclasses.replace(self, conv_dtype=conv_dtype)


def check_recompute(n, method, cell, stages):
    """`n` (recompute_stages), or a one-line ValueError when a `method` supernet of
    `cell` cells and `stages` stages cannot recompute its first n stages' cells:
    BARS' fused cell only (bars/recompute.py), 0..stages."""
    n = int(n)
    if not n:
        return n
    if method != "bars":
        raise ValueError(f"recompute_stages={n}: recomputing cells in the backward pass "
                         "is implemented for BARS' fused cell only")
    if cell != "fused":
        raise ValueError("recompute_stages needs the fused cell (cell='fused')")
    if not 0 <= n <= stages:
        raise ValueError(f"recompute_stages must be in 0..{stages}, got {n}")
    return n


def configure_threads(intra=0, inter=0):
    """Set TensorFlow's intra/inter-op thread pools (0 leaves TensorFlow's default)."""
    import tensorflow as tf
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(int(intra))
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(int(inter))


def native_bfloat16():
    """True if this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX) and no GPU is
    visible: then bfloat16 binary convs run about twice as fast as float32 ones."""
    import tensorflow as tf
    from bnas_tf import binary
    if tf.config.list_physical_devices("GPU") or binary.onednn_disabled():
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
