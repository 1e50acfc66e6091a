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

import bnas_tf  # noqa: F401

from bnas_tf import costs, files, model_dir
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


def model_row(preset_or_spec, num_classes=None, image_size=None, name=None):
    """Cost row of one preset name / preset JSON file / spec dict."""
    spec = presets.resolve(preset=preset_or_spec) if isinstance(preset_or_spec, str) \
        else dict(preset_or_spec)
    kind = dataset_kind(spec)
    default_classes, default_size = DEFAULT_SHAPE[kind]
    num_classes = int(num_classes or spec.get("num_classes") or default_classes)
    image_size = int(image_size or spec.get("image_size") or default_size)
    c = costs.count_spec(spec, num_classes, image_size)
    label = preset_or_spec if isinstance(preset_or_spec, str) else spec.get("family", "model")
    row = {"name": name or spec.get("name") or label, "dataset": kind,
           "num_classes": num_classes, "image_size": image_size}
    row["model"] = row["name"]
    row.update(c.to_dict())
    row["bnas_flops"] = bnas_flops(c)
    return row


def bnas_flops(c):
    """The BNAS paper's "FLOPs": equivalent OPs without float convs inside cells.

    BNAS (Tables 6, 7, 9, 13) leaves its float reduction-cell residual out of the
    count; with that, BNAS-A is 13.9M (paper 0.14e8) and BNAS-D 144M (~1.48e8).
    """
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


def _render(header, lines):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    def fmt(cells):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule] + [fmt(line) for line in lines])


def format_costs(rows):
    """An aligned text table of cost rows (millions, ratios)."""
    header = ["model", "classes", "px", "FLOPs(M)", "BiOPs(M)", "EqOPs(M)", "params(M)",
              "memory(MB)", "saving", "speedup", "fully-bin"]
    lines = [[r["name"], r["num_classes"], r["image_size"], _m(r["flops"]), _m(r["biops"]),
              _m(r["equivalent_ops"]), _m(r["params"]), f"{r['memory_bytes'] / 2**20:.2f}",
              f"{r['memory_saving']:.1f}x", f"{r['speedup']:.1f}x",
              "yes" if r["fully_binarized"] else "no"] for r in rows]
    return _render(header, lines)


def _acc(value):
    return "-" if value is None else f"{value:.2f}"


def _paper_acc(refs, key):
    values = [f"{r[key]:.2f} ({r['source']})" for r in refs if r.get(key) is not None]
    return "; ".join(values) or "-"


def format_paper_table(rows, kind):
    """BNAS Table 6 / 7 style: models grouped by FLOPs budget, our and the papers' accuracy."""
    header = ["budget(x1e8)", "model", "FLOPs(M)", "BiOPs(M)", "EqOPs(M)", "BNAS-FLOPs(M)",
              "params(M)", "fully-bin", "top-1", "top-1 paper"]
    if kind == "imagenet":
        header[9:9] = ["top-5"]
        header.append("top-5 paper")
    header.append("paper EqOPs(M)")
    lines, last = [], None
    for r in rows:
        budget = f"~{r['budget'] / 1e8:.2f}" if r["budget"] != last else ""
        last = r["budget"]
        line = [budget, r["name"], _m(r["flops"]), _m(r["biops"]), _m(r["equivalent_ops"]),
                _m(r["bnas_flops"]), _m(r["params"]), "yes" if r["fully_binarized"] else "no",
                _acc(r.get("top1"))]
        if kind == "imagenet":
            line.append(_acc(r.get("top5")))
        line.append(_paper_acc(r["paper"], "top1"))
        if kind == "imagenet":
            line.append(_paper_acc(r["paper"], "top5"))
        line.append("; ".join(f"{p['eq_ops']} ({p['source']})" for p in r["paper"]
                              if p.get("eq_ops")) or "-")
        lines.append(line)
    title = {"cifar": "CIFAR-10", "imagenet": "ImageNet"}[kind]
    note = ("FLOPs = float MACs, BiOPs = binary MACs, EqOPs = FLOPs + BiOPs/64, "
            "BNAS-FLOPs = EqOPs without float convs inside cells (the BNAS paper's count), "
            "which sets the budget group;\naccuracies in %; paper EqOPs = BNAS' 'FLOPs' "
            "(~: budget group) or BARS' 'Equivalent Ops'.")
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
