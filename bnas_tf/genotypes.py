"""Genotypes as plain data: BNAS cells and BARS macro layouts, JSON I/O, validation.

BNAS (DARTS-style) cell genotype: for each of the 4 intermediate nodes two
``(op, input)`` pairs; input 0 is s0 (the cell before last), 1 is s1 (the last
cell), 2.. are earlier intermediate nodes. The cell outputs the concat of
`*_concat` nodes. `template` is ``bnas`` (inter-cell skips) or ``darts``.

BARS genotype: a macro layout (per stage width ratio and depth) and dense cells:
one topology per stage plus one shared by the reduction cells. A dense cell has an
input node 0 and nodes 1..4; every pair i < j is an edge carrying one op (``none``
allowed); the cell outputs node 4.

JSON files carry ``{"method": "bnas"|"bars", ...}``; `load` accepts a path, a JSON
string or a released-genotype name.
"""
from __future__ import annotations

import dataclasses
import json
import os

from bnas_tf import files, ops

NODES = 4
TEMPLATES = ("bnas", "darts")


class GenotypeError(ValueError):
    """A malformed genotype (one-line message naming the cause)."""


@dataclasses.dataclass(frozen=True)
class BnasGenotype:
    normal: tuple
    reduce: tuple
    normal_concat: tuple = (2, 3, 4, 5)
    reduce_concat: tuple = (2, 3, 4, 5)
    template: str = "bnas"

    def __post_init__(self):
        for field in ("normal", "reduce"):
            object.__setattr__(self, field, tuple((str(op), int(i)) for op, i in
                                                  _pairs(getattr(self, field), field)))
        for field in ("normal_concat", "reduce_concat"):
            object.__setattr__(self, field, tuple(int(i) for i in getattr(self, field)))
        self.validate()

    def validate(self):
        if self.template not in TEMPLATES:
            raise GenotypeError(f"unknown cell template {self.template!r}; "
                                f"choose one of {', '.join(TEMPLATES)}")
        for kind in ("normal", "reduce"):
            edges = getattr(self, kind)
            if len(edges) != 2 * NODES:
                raise GenotypeError(f"{kind} cell needs {2 * NODES} (op, input) pairs, "
                                    f"got {len(edges)}")
            for k, (op, src) in enumerate(edges):
                _check_op(op, f"{kind} edge {k}")
                node = 2 + k // 2
                if not 0 <= src < node:
                    raise GenotypeError(f"{kind} edge {k}: node {node} cannot take input "
                                        f"{src} (valid 0..{node - 1})")
            concat = getattr(self, f"{kind}_concat")
            if not concat or any(not 2 <= i < 2 + NODES for i in concat):
                raise GenotypeError(f"{kind}_concat must list nodes in 2..{1 + NODES}, "
                                    f"got {list(concat)}")

    def ops_used(self):
        return [op for op, _ in self.normal + self.reduce]

    def to_dict(self):
        return {"method": "bnas", "template": self.template,
                "normal": [list(e) for e in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [list(e) for e in self.reduce], "reduce_concat": list(self.reduce_concat)}

    @classmethod
    def from_dict(cls, data):
        _require(data, ("normal", "reduce"), "bnas")
        return cls(normal=data["normal"], reduce=data["reduce"],
                   normal_concat=data.get("normal_concat", (2, 3, 4, 5)),
                   reduce_concat=data.get("reduce_concat", (2, 3, 4, 5)),
                   template=data.get("template", "bnas"))

    def __str__(self):
        def cell(edges):
            return ", ".join(f"{op}<-{src}" for op, src in edges)
        return f"normal: [{cell(self.normal)}]  reduce: [{cell(self.reduce)}]"


def disconnected_cells(genotype):
    """Kinds ("normal", "reduce") of a BnasGenotype's cells whose output does not depend
    on their inputs: no `*_concat` node reaches s0 or s1 through non-``none`` ops (a
    Zeroise-dominated derivation). A network of such a normal cell outputs constant
    logits (loss ln(classes)). Empty for other genotypes."""
    if not isinstance(genotype, BnasGenotype):
        return []
    dead = []
    for kind in ("normal", "reduce"):
        edges = getattr(genotype, kind)
        live = [True, True]  # s0, s1
        for node in range(NODES):
            live.append(any(op != ops.ZERO and live[src]
                            for op, src in edges[2 * node:2 * node + 2]))
        if not any(live[i] for i in getattr(genotype, f"{kind}_concat")):
            dead.append(kind)
    return dead


def dense_edges(nodes=NODES):
    """The (from, to) edges of a dense cell with an input node 0 and nodes 1..nodes."""
    return tuple((i, j) for j in range(1, nodes + 1) for i in range(j))


@dataclasses.dataclass(frozen=True)
class BarsStage:
    width: float
    depth: int
    cell: tuple  # one op per dense edge, in dense_edges() order


@dataclasses.dataclass(frozen=True)
class BarsGenotype:
    stages: tuple
    reduce_cell: tuple
    base_channels: tuple = (48, 96, 192)
    max_depth: int = 3

    def __post_init__(self):
        stages = tuple(s if isinstance(s, BarsStage) else BarsStage(**s) for s in self.stages)
        stages = tuple(BarsStage(float(s.width), int(s.depth), tuple(s.cell)) for s in stages)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "reduce_cell", tuple(self.reduce_cell))
        object.__setattr__(self, "base_channels", tuple(int(c) for c in self.base_channels))
        self.validate()

    def validate(self):
        n_edges = len(dense_edges())
        if len(self.stages) != len(self.base_channels):
            raise GenotypeError(f"{len(self.stages)} stages but {len(self.base_channels)} "
                                "base channel counts")
        cells = [(f"stage {i} cell", s.cell) for i, s in enumerate(self.stages)]
        for where, cell in cells + [("reduce cell", self.reduce_cell)]:
            if len(cell) != n_edges:
                raise GenotypeError(f"{where} needs {n_edges} edge ops, got {len(cell)}")
            for k, op in enumerate(cell):
                _check_op(op, f"{where} edge {k}")
        for i, s in enumerate(self.stages):
            if not 0 < s.width <= 1:
                raise GenotypeError(f"stage {i}: width ratio must be in (0, 1], got {s.width}")
            if not 0 <= s.depth <= self.max_depth:
                raise GenotypeError(f"stage {i}: depth must be in 0..{self.max_depth}, "
                                    f"got {s.depth}")

    def ops_used(self):
        return [op for s in self.stages for op in s.cell] + list(self.reduce_cell)

    def to_dict(self):
        return {"method": "bars", "base_channels": list(self.base_channels),
                "max_depth": self.max_depth,
                "stages": [{"width": s.width, "depth": s.depth, "cell": list(s.cell)}
                           for s in self.stages],
                "reduce_cell": list(self.reduce_cell)}

    @classmethod
    def from_dict(cls, data):
        _require(data, ("stages", "reduce_cell"), "bars")
        stages = data["stages"]
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise GenotypeError("bars genotype: 'stages' must be a list of "
                                "{width, depth, cell} objects")
        for i, s in enumerate(stages):
            missing = {"width", "depth", "cell"} - set(s)
            if missing:
                raise GenotypeError(f"bars genotype: stage {i} lacks {', '.join(sorted(missing))}")
        return cls(stages=[BarsStage(s["width"], s["depth"], s["cell"]) for s in stages],
                   reduce_cell=data["reduce_cell"],
                   base_channels=data.get("base_channels", (48, 96, 192)),
                   max_depth=data.get("max_depth", 3))

    def __str__(self):
        return "; ".join(f"stage{i}: w={s.width} d={s.depth}" for i, s in enumerate(self.stages))


def _check_op(op, where):
    if op not in ops.OPS:
        raise GenotypeError(f"{where}: unknown op {op!r}; known ops: {', '.join(ops.OPS)}")


def _pairs(edges, field):
    try:
        pairs = [tuple(e) for e in edges]
    except TypeError:
        raise GenotypeError(f"{field} must be a list of [op, input] pairs") from None
    for e in pairs:
        if len(e) != 2 or not isinstance(e[0], str) or isinstance(e[1], bool) \
                or not isinstance(e[1], int):
            raise GenotypeError(f"{field}: {list(e)} is not an [op name, input index] pair")
    return pairs


def _require(data, keys, method):
    if not isinstance(data, dict):
        raise GenotypeError(f"{method} genotype must be a JSON object")
    missing = [k for k in keys if k not in data]
    if missing:
        raise GenotypeError(f"{method} genotype lacks {', '.join(missing)}")


# Released BNAS genotypes (reference implementation).
BNAS_A = BnasGenotype(
    normal=[("none", 1), ("bin_dil_conv_3x3", 0), ("bin_conv_3x3", 1), ("none", 2),
            ("none", 2), ("none", 3), ("none", 3), ("none", 4)],
    reduce=[("max_pool_3x3", 0), ("none", 1), ("max_pool_3x3", 0), ("none", 2),
            ("none", 3), ("none", 2), ("none", 3), ("none", 4)])
BNAS_IMAGENET = BnasGenotype(
    normal=[("bin_conv_3x3", 1), ("bin_dil_conv_3x3", 0), ("bin_conv_3x3", 1),
            ("bin_conv_3x3", 2), ("bin_conv_3x3", 2), ("bin_dil_conv_3x3", 1),
            ("bin_dil_conv_3x3", 1), ("bin_conv_3x3", 0)],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("bin_conv_3x3", 2),
            ("max_pool_3x3", 0), ("bin_dil_conv_3x3", 3), ("max_pool_3x3", 0),
            ("bin_dil_conv_3x3", 4)])
RELEASED = {"bnas_a": BNAS_A, "bnas_imagenet": BNAS_IMAGENET}
for _variant in "defgh":
    RELEASED[f"bnas_{_variant}"] = BNAS_IMAGENET

METHODS = {"bnas": BnasGenotype, "bars": BarsGenotype}


def from_dict(data):
    if not isinstance(data, dict):
        raise GenotypeError("a genotype must be a JSON object")
    method = data.get("method", "bnas")
    if method not in METHODS:
        raise GenotypeError(f"unknown genotype method {method!r}; choose one of "
                            f"{', '.join(METHODS)}")
    return METHODS[method].from_dict(data)


def load(source):
    """A genotype from a released name (``bnas_a``), a JSON file path, or a JSON string."""
    if isinstance(source, (BnasGenotype, BarsGenotype)):
        return source
    if isinstance(source, dict):
        return from_dict(source)
    key = str(source).strip()
    if key.lower().replace("-", "_") in RELEASED:
        return RELEASED[key.lower().replace("-", "_")]
    if key.startswith("{"):
        text, where = key, "genotype string"
    elif os.path.isfile(key):
        with open(key, encoding="utf-8") as f:
            text, where = f.read(), key
    else:
        raise GenotypeError(f"genotype {key!r} is neither a released name "
                            f"({', '.join(RELEASED)}) nor an existing JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenotypeError(f"{where}: malformed genotype JSON ({e.msg} at line {e.lineno} "
                            f"column {e.colno})") from None
    if isinstance(data, dict) and "genotype" in data and "method" not in data:
        data = data["genotype"]
    try:
        return from_dict(data)
    except GenotypeError as e:
        raise GenotypeError(f"{where}: {e}") from None


def save(genotype, path, extra=None):
    """Write `genotype` as JSON atomically (a failed write leaves the old file intact)."""
    data = genotype.to_dict()
    if extra:
        data.update(extra)
    return files.write_json(path, data)


# ----------------------------------------------------------------------------- random draws

def random_bnas(rng, op_names=ops.BNAS_OPS, template="bnas"):
    """A BNAS genotype drawn uniformly from the search space (random-sampling baseline,
    Li & Talwalkar 2019): for each cell type and each node 2..5, two distinct inputs
    (as DARTS/BNAS derivation keeps) uniform over the earlier nodes, and for each edge
    an op uniform over `op_names` (Zeroise, ``none``, included). `rng`: a
    numpy Generator (`np.random.default_rng(seed)`)."""
    op_names = ops.check_ops(op_names)
    cells = {}
    for kind in ("normal", "reduce"):
        edges = []
        for node in range(2, 2 + NODES):
            for src in sorted(rng.choice(node, size=2, replace=False)):
                edges.append((op_names[int(rng.integers(len(op_names)))], int(src)))
        cells[kind] = edges
    return BnasGenotype(normal=cells["normal"], reduce=cells["reduce"], template=template)


def random_bars(rng, op_names=ops.BARS_OPS, base_channels=(48, 96, 192),
                width_choices=(0.25, 0.5, 0.75, 1.0), max_depth=3, fits=None, max_tries=200):
    """A BARS genotype drawn uniformly from the search space: per stage a width ratio
    from `width_choices` and a depth in 0..max_depth, one op per dense-cell edge (every
    stage cell and the reduction cell) uniform over `op_names`. `fits(genotype) -> bool`
    (e.g. equivalent OPs within the FLOPs budget) rejects draws; ValueError after
    `max_tries` rejected draws."""
    op_names = ops.check_ops(op_names)
    n_edges = len(dense_edges())

    def cell():
        return tuple(op_names[int(i)] for i in rng.integers(len(op_names), size=n_edges))

    for _ in range(max_tries):
        stages = [BarsStage(float(width_choices[int(rng.integers(len(width_choices)))]),
                            int(rng.integers(max_depth + 1)), cell()) for _ in base_channels]
        genotype = BarsGenotype(stages=stages, reduce_cell=cell(),
                                base_channels=tuple(base_channels), max_depth=max_depth)
        if fits is None or fits(genotype):
            return genotype
    raise ValueError(f"no random BARS genotype fits the budget in {max_tries} draws; "
                     "raise the FLOPs budget")
