"""Cost reports and paper-style comparison tables (BNAS Tables 6/7, BARS Table 2).

`cost_rows(names)` counts the costs of presets (or specs); `paper_table(kind,
results)` groups the presets of one dataset, and the trained models of
`tools/train.py` output directories, by the BNAS paper's FLOPs budgets (see
`bnas_flops`) and puts our accuracy next to the one the papers printed.
`format_costs`, `format_paper_table`, `to_csv` and `write` render them;
`tools/report.py` is the command-line face.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import textwrap

import bnas_tf  # noqa: F401

from bnas_tf import cost_cache, costs, files, model_dir
from bnas_tf.models import presets

KINDS = ("cifar", "imagenet")
DEFAULT_SHAPE = {"cifar": (10, 32), "imagenet": (1000, 224)}
# FLOPs budgets (equivalent OPs) of BNAS Table 6 (CIFAR-10) and Tables 7/13 (ImageNet).
BUDGETS = {"cifar": (0.04e8, 0.16e8, 0.27e8, 0.90e8, 1.41e8),
           "imagenet": (1.48e8, 1.63e8, 2.49e8, 6.39e8, 18.25e8)}
COST_KEYS = ("params", "total_params", "binary_params", "flops", "biops", "equivalent_ops",
             "memory_bytes", "float_memory_bytes", "memory_saving", "speedup",
             "fully_binarized")


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """One accuracy printed in a paper, for the network a preset rebuilds.

    `eq_ops` is the paper's cost figure as printed (BNAS's "FLOPs" budget, which is
    FLOPs + BiOPs/64, or BARS' "Equivalent Ops"), in millions; ``~`` marks a
    budget group rather than a measured value. `config` lists spec values the
    paper's network had; the reference is only shown for a spec that matches them
    (e.g. BNAS-F of Table 13 is 12 cells x 84 channels).
    """

    top1: float
    source: str
    top5: float | None = None
    eq_ops: str | None = None
    config: tuple = ()

    def matches(self, spec):
        return all(spec.get(k) == v for k, v in self.config)


def _bnas(top1, table, eq_ops, top5=None, config=()):
    return PaperResult(top1, f"BNAS T{table}", top5, eq_ops, config)


def _bars(top1, table, eq_ops=None):
    return PaperResult(top1, f"BARS T{table}", None, eq_ops)


PAPER = {
    "bnas-mini": (_bnas(90.12, 6, "~4"),),
    "bnas-a": (_bnas(92.70, 6, "14"), _bars(92.7, 2, "121.76")),
    "bnas-b": (_bnas(93.76, 6, "~27"),),
    "bnas-c": (_bnas(94.43, 6, "~90"),),
    "bnas-d": (_bnas(57.69, 7, "~148", 79.89),),
    "bnas-e": (_bnas(58.76, 7, "~163", 80.61),),
    "bnas-f": (_bnas(60.67, 13, "249", 81.88, (("cells", 12), ("channels", 84))),),
    "bnas-g": (_bnas(63.51, 13, "639", 83.91, (("cells", 16), ("channels", 128))),),
    # Table 13's "BNAS-G" (16 cells x 128 channels) is the size of our bnas-h preset.
    "bnas-h": (PaperResult(63.51, "BNAS T13 'G'", 83.91, "639",
                           (("cells", 16), ("channels", 128))),),
    "xnor-resnet18": (_bnas(88.82, 6, "~16"), _bars(90.55, 2, "25.55"), _bars(90.6, 1)),
    "xnor-resnet18-bds": (_bars(89.7, 1),),
    "xnor-resnet18-ids": (_bars(89.9, 1),),
    "xnor-resnet34": (_bnas(88.54, 6, "~27"), _bars(91.49, 2, "44.98")),
    "xnor-wrn40": (_bnas(91.58, 6, "~27"), _bars(91.58, 2, "50.44")),
    "xnor-nin": (_bnas(86.28, 6, "~16"), _bars(86.28, 2, "12.13")),
    "binarynet-resnet18": (_bnas(89.95, 6, "~16"),),
    "xnor-resnet18-imagenet": (_bnas(51.20, 7, "~148", 73.20), _bars(48.3, 2)),
    "xnor-resnet18-imagenet-fpds": (_bars(53.1, 2),),
    "bars-a": (_bars(91.25, 2, "10.02"),),
    "bars-b": (_bars(92.98, 2, "18.37"),),
    "bars-c": (_bars(93.43, 2, "32.27"),),
    "bars-d": (_bars(54.6, 2, "129.60"),),
    "bars-e": (_bars(56.2, 2, "183.25"),),
    "bars-f": (_bars(60.3, 2, "293.53"),),
    # Hand-designed binary networks (bnas_tf/models/birealnet.py, reactnet.py, quicknet.py):
    # Bi-Real-18 as BNAS Table 7 prints it (the Bi-Real paper's 56.4 / 79.5 at 1.63e8 OPs),
    # ReActNet-A from its paper (0.87e8 OPs), QuickNet from larq-zoo's docs (no OPs given).
    # No paper trained the CIFAR forms (birealnet18-cifar, reactnet-a-cifar) as built here.
    "birealnet18": (_bnas(56.40, 7, "~163", 79.50),),
    "reactnet-a": (PaperResult(69.4, "ReActNet", None, "87"),),
    "quicknet": (PaperResult(63.3, "larq-zoo", 84.6),),
    "quicknet-small": (PaperResult(59.4, "larq-zoo", 81.8),),
}


def dataset_kind(spec, image_size=None, dataset=None):
    """'cifar' or 'imagenet': from the dataset name, the spec's stem, or the image size."""
    dataset = str(dataset or spec.get("dataset") or "").lower()
    if dataset.startswith("imagenet"):
        return "imagenet"
    if dataset.startswith("cifar"):
        return "cifar"
    if spec.get("stem") in KINDS:
        return spec["stem"]
    if image_size is not None:
        return "imagenet" if int(image_size) >= 128 else "cifar"
    return "cifar"


def expand_models(models):
    """Preset names from 'all', a comma-separated string or a list (validated)."""
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    models = list(models or [])
    if models == ["all"]:
        return presets.names()
    if not models:
        raise ValueError("no models given; pass preset names (see --models=all)")
    for name in models:
        if not os.path.isfile(name):
            presets.get(name)  # raises a one-line error naming the unknown preset
    return models


def shape_of(spec, num_classes=None, image_size=None):
    """(classes, image side): the given ones, else the spec's, else its dataset's default."""
    default_classes, default_size = DEFAULT_SHAPE[dataset_kind(spec)]
    return (int(num_classes or spec.get("num_classes") or default_classes),
            int(image_size or spec.get("image_size") or default_size))


def count_costs(spec, num_classes, image_size):
    """Costs of the network of `spec` (built to count): `costs.Costs.to_dict()`."""
    return costs.count_spec(spec, num_classes, image_size).to_dict()


def model_row(preset_or_spec, num_classes=None, image_size=None, name=None):
    """Cost row of one preset name / preset JSON file / spec dict (costs from
    `cost_cache`: the network is built only when its figures are not cached)."""
    spec = presets.resolve(preset=preset_or_spec) if isinstance(preset_or_spec, str) \
        else dict(preset_or_spec)
    num_classes, image_size = shape_of(spec, num_classes, image_size)
    label = preset_or_spec if isinstance(preset_or_spec, str) else spec.get("family", "model")
    row = {"name": name or spec.get("name") or label, "dataset": dataset_kind(spec),
           "num_classes": num_classes, "image_size": image_size}
    row["model"] = row["name"]
    row.update(cost_cache.cached_costs(spec, num_classes, image_size, count_costs))
    row["bnas_flops"] = bnas_flops(row)
    return row


def bnas_flops(c):
    """The BNAS paper's "FLOPs": equivalent OPs without float convs inside cells
    (`c`: a costs.Costs or its to_dict()).

    BNAS (Tables 6, 7, 9, 13) leaves its float reduction-cell residual out of the
    count; with that, BNAS-A is 13.9M (paper 0.14e8) and BNAS-D 144M (~1.48e8).
    """
    if isinstance(c, dict):
        return c["equivalent_ops"] - c["cell_float_flops"]
    return c.equivalent_ops - c.cell_float_flops


def cost_rows(models, num_classes=None, image_size=None, progress=False):
    """Cost rows of several presets (see `expand_models`)."""
    names = expand_models(models)
    iterator = names
    if progress and len(names) > 1:
        from tqdm import tqdm
        iterator = tqdm(names, desc="counting", unit="model")
    return [model_row(n, num_classes, image_size) for n in iterator]


def _percent(value):
    if value is None:
        return None
    value = float(value)
    return 100.0 * value if value <= 1.0 else value


def result_row(directory):
    """Costs and accuracy of one trained model directory (spec.json + metrics.json)."""
    spec, num_classes, image_size, record = model_dir.read_spec(directory)
    metrics = model_dir.read_json(model_dir.path(directory, model_dir.METRICS),
                                  "metrics (has training finished?)")
    if "top1" not in metrics:
        raise ValueError(f"{directory}: metrics.json has no 'top1'")
    weights = model_dir.path(directory, model_dir.WEIGHTS)
    if os.path.isfile(weights):  # the scores are those of the saved weights' network
        model_dir.check_weights(model_dir.build_model(directory), weights)
    name = spec.get("name") or metrics.get("spec") or os.path.basename(
        os.path.normpath(directory))
    dataset = metrics.get("dataset") or record.get("dataset")
    row = model_row(spec, num_classes, image_size, name=name)
    row.update({"name": f"{name} [{os.path.basename(os.path.normpath(directory))}]",
                "dataset": dataset_kind(spec, image_size, dataset),
                "top1": _percent(metrics["top1"]), "top5": _percent(metrics.get("top5")),
                "results_dir": str(directory), "spec": spec})
    return row


def paper_references(name, spec):
    """The PaperResults printed for preset `name`, if `spec` is that network."""
    refs = PAPER.get(str(name).lower(), ())
    if not refs:
        return ()
    try:
        preset_spec = presets.get(name)
    except ValueError:
        preset_spec = None
    if preset_spec is not None and any(
            spec.get(k) != v for k, v in preset_spec.items() if k not in ("name", "genotype")):
        return ()  # a resized / modified network: the paper's number does not apply
    return tuple(r for r in refs if r.matches(spec))


def budget_of(equivalent_ops, kind):
    """The nearest (log scale) FLOPs budget of the paper's table."""
    return min(BUDGETS[kind], key=lambda b: abs(math.log(max(equivalent_ops, 1.0) / b)))


def paper_table(kind, results=(), models=None, progress=False):
    """Rows of a paper-style table: presets of `kind` plus trained `results` dirs.

    Each row has the cost columns, ``budget`` (the paper's FLOPs budget nearest
    its ``bnas_flops``), ``top1``/``top5`` (ours, from results; percent) and ``paper`` (the
    accuracies the papers printed, with their table). Sorted by budget, then cost.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown table {kind!r}; choose one of {', '.join(KINDS)}")
    if isinstance(results, str):
        results = [r.strip() for r in results.split(",") if r.strip()]
    for directory in results:
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"results directory not found: {directory}")
    rows = [result_row(d) for d in results]
    rows = [r for r in rows if r["dataset"] == kind]
    if models is None:
        names = [n for n in presets.names() if dataset_kind(presets.get(n)) == kind]
    else:
        names = [n for n in expand_models(models)
                 if dataset_kind(presets.resolve(preset=n)) == kind]
    iterator = names
    if progress and len(names) > 1:
        from tqdm import tqdm
        iterator = tqdm(names, desc="counting", unit="model")
    for name in iterator:
        row = model_row(name)
        row.update({"top1": None, "top5": None, "spec": presets.resolve(preset=name)})
        rows.append(row)
    for row in rows:
        refs = paper_references(row["model"], row["spec"])
        row["paper"] = [dataclasses.asdict(r) | {"config": dict(r.config)} for r in refs]
        row["budget"] = budget_of(row["bnas_flops"], kind)
        row.pop("spec")
    rows.sort(key=lambda r: (r["budget"], r["bnas_flops"], r.get("top1") is None))
    return rows


# ----------------------------------------------------------------------------- rendering

def _m(value):
    return f"{value / 1e6:.2f}"


TABLE_WIDTH = 100  # columns of a printed table; wider ones are wrapped into blocks


def _wrap(text):
    return "\n".join(textwrap.wrap(text, TABLE_WIDTH))


def _render(header, lines, width=TABLE_WIDTH):
    """An aligned text table; when wider than `width`, its columns are wrapped into
    blocks (each repeating the first column) separated by a blank line."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    blocks, block = [], [0]
    for i in range(1, len(header)):
        if block[1:] and sum(widths[j] + 2 for j in block) + widths[i] > width:
            blocks.append(block)
            block = [0]
        block.append(i)
    blocks.append(block)

    def fmt(cells, cols):
        return "  ".join(str(cells[i]).rjust(widths[i]) if i else str(cells[i]).ljust(widths[i])
                         for i in cols).rstrip()

    out = []
    for cols in blocks:
        head = fmt(header, cols)
        out += ([""] if out else []) + [head, "-" * len(head)] + [fmt(line, cols)
                                                                   for line in lines]
    return "\n".join(out)


def format_costs(rows):
    """An aligned text table of cost rows (millions, MB, ratios) within `TABLE_WIDTH`
    columns; every figure (speedup, float memory, ...) is in --format=json/csv."""
    header = ["model", "cls", "px", "FLOPs", "BiOPs", "EqOPs", "params", "MB", "saving", "bin"]
    lines = [[r["name"], r["num_classes"], r["image_size"], _m(r["flops"]), _m(r["biops"]),
              _m(r["equivalent_ops"]), _m(r["params"]), f"{r['memory_bytes'] / 2**20:.2f}",
              f"{r['memory_saving']:.1f}x", "yes" if r["fully_binarized"] else "no"]
             for r in rows]
    note = _wrap("FLOPs, BiOPs, EqOPs (= FLOPs + BiOPs/64) per image and params in millions; "
                 "MB = model memory; saving = float / binary memory; bin = fully binarized; "
                 "all figures (speedup, ...): --format=json or csv.")
    return f"{_render(header, lines)}\n{note}"


def _acc(value):
    return "-" if value is None else f"{value:.2f}"


def _paper_cell(ref, kind):
    """One accuracy a paper printed: top-1[/top-5] @ its EqOPs (millions) (paper, table)."""
    acc = f"{ref['top1']:.2f}"
    if kind == "imagenet" and ref.get("top5") is not None:
        acc += f"/{ref['top5']:.2f}"
    cost = f" @ {ref['eq_ops']}" if ref.get("eq_ops") else ""
    return f"{acc}{cost} ({ref['source']})"


def format_paper_table(rows, kind):
    """BNAS Table 6 / 7 style: models grouped by FLOPs budget, our and the papers' accuracy
    (one line per paper reference), within `TABLE_WIDTH` columns."""
    header = ["budget", "model", "EqOPs(M)", "BNAS(M)", "params(M)", "bin", "top-1"]
    if kind == "imagenet":
        header.append("top-5")
    header.append("paper top-1" + ("/top-5" if kind == "imagenet" else "") + " @ EqOPs(M)")
    lines, last = [], None
    for r in rows:
        budget = f"~{r['budget'] / 1e8:.2f}" if r["budget"] != last else ""
        last = r["budget"]
        line = [budget, r["name"], _m(r["equivalent_ops"]), _m(r["bnas_flops"]),
                _m(r["params"]), "yes" if r["fully_binarized"] else "no", _acc(r.get("top1"))]
        if kind == "imagenet":
            line.append(_acc(r.get("top5")))
        cells = [_paper_cell(p, kind) for p in r["paper"]] or ["-"]
        lines.append(line + cells[:1])
        lines += [[""] * len(line) + [cell] for cell in cells[1:]]
    title = {"cifar": "CIFAR-10", "imagenet": "ImageNet"}[kind]
    note = _wrap("EqOPs = FLOPs + BiOPs/64 (FLOPs = float MACs, BiOPs = binary MACs; both in "
                 "--format=json/csv); BNAS = EqOPs without float convs inside cells (the BNAS "
                 "paper's 'FLOPs'), which sets the budget group (x1e8); bin = fully "
                 "binarized; accuracies in %; a paper's EqOPs with ~ is its budget group "
                 "(BNAS' 'FLOPs', BARS' 'Equivalent Ops', ReActNet's 'OPs').")
    return f"{title}: accuracy at various FLOPs budgets\n{_render(header, lines)}\n{note}"


def _flat(row):
    out = {}
    for key, value in row.items():
        if key == "paper":
            out["paper_top1"] = "; ".join(f"{r['top1']} ({r['source']})" for r in value)
            out["paper_top5"] = "; ".join(f"{r['top5']} ({r['source']})" for r in value
                                          if r.get("top5") is not None)
            out["paper_eq_ops_m"] = "; ".join(f"{r['eq_ops']} ({r['source']})" for r in value
                                              if r.get("eq_ops"))
        elif not isinstance(value, (dict, list)):
            out[key] = value
    return out


def to_csv(rows):
    flat = [_flat(r) for r in rows]
    fields = list(dict.fromkeys(k for r in flat for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def to_json(rows):
    return json.dumps(rows, indent=2)


def write(rows, file_path):
    """Write rows as .json or .csv (by extension), atomically."""
    ext = os.path.splitext(str(file_path))[1].lower()
    if ext == ".json":
        return model_dir.write_json(file_path, rows)
    if ext != ".csv":
        raise ValueError(f"--output must end in .json or .csv, got {file_path}")
    return files.write_atomic(file_path, to_csv(rows))
