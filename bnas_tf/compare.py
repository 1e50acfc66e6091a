"""Train several networks under one budget and compare them: table, JSON and plot.

`compare(models, data_config, train_config, output_dir)` trains every model (a
preset name or preset JSON file) with the same recipe, epochs and data through
`training.train` into ``output_dir/<model>/`` (a rerun resumes each one), then
writes

* ``comparison.json``  settings and one row per model (costs, our top-1/top-5,
  the papers' numbers where the network is theirs, the model directory);
* ``comparison.png``   top-1 accuracy against Equivalent OPs (log x), labelled
  points; papers' accuracies as hollow markers;

and returns the rows. The printed table is `report.format_paper_table`.
"""
from __future__ import annotations

import dataclasses
import os
import re

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

from bnas_tf import data, distribute, report, training
from bnas_tf import model_dir as mdir
from bnas_tf.models import checks, presets

COMPARISON_JSON = "comparison.json"
COMPARISON_PNG = "comparison.png"
DATA_SETTINGS = ("dataset", "data_dir", "image_size", "max_examples", "validation_fraction",
                 "seed")


def model_dirname(model):
    """Directory name of a model: the preset name, or a preset file's stem."""
    name = os.path.splitext(os.path.basename(model))[0] if os.path.isfile(model) else model
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name) or "model"


def model_spec(model, overrides=None, sources=None):
    """The spec of preset (or preset file) `model` with `overrides` (cells, channels,
    binarization, residual; None = keep) applied; ValueError naming an override the
    model's family does not take (drop_path is only checked: it is a training value)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    drop_path = overrides.pop("drop_path", None)  # a training value: checked, not stored
    try:
        spec = presets.resolve(preset=model, sources=sources, **overrides)
        checks.check_options(spec.get("family"), {"drop_path": drop_path})
    except ValueError as e:
        raise ValueError(f"{model}: {e}") from None
    spec.setdefault("name", model_dirname(model))
    if os.path.isfile(model):  # a preset file names the network after the file
        spec["name"] = model_dirname(model)
    return spec


def _rows(directories, kind):
    rows = []
    for directory in directories:
        row = report.result_row(directory)
        spec = mdir.read_spec(directory)[0]
        row["name"] = row["model"]
        row["dataset"] = kind
        row["paper"] = [dataclasses.asdict(r) | {"config": dict(r.config)}
                        for r in report.paper_references(row["model"], spec)]
        row["budget"] = report.budget_of(row["equivalent_ops"], kind)
        rows.append(row)
    return rows


def compare(models, data_config, train_config, output_dir, strategy=None, plot=True,
            overrides=None, adapt_to_data=False, labels=None):
    """Train `models` under the same recipe/epochs/data and compare them (see module doc).

    overrides: {cells, channels, binarization, residual: value or None} applied to every
    model; a model whose family lacks one is refused (ValueError) before any training.
    adapt_to_data: adapt presets meant for other data (`checks.adapt_to_data`) instead
    of refusing them. labels: {override: its flag name} for the printed size lines.
    strategy: a tf.distribute.Strategy or name (`distribute.make_strategy`); under
    multi_worker every worker trains each model with the others (training.train: a
    non-chief writes only temporary files) and the chief alone writes the table,
    comparison.json and the plot.
    Returns the comparison dict written to output_dir/comparison.json (None on a
    non-chief worker).
    """
    strategy = training.make_strategy(strategy)  # first: multi-worker precedes any TF op
    names = report.expand_models(models)
    dirnames = [model_dirname(m) for m in names]
    duplicates = sorted({d for d in dirnames if dirnames.count(d) > 1})
    if duplicates:
        raise ValueError(f"models given twice (or with the same name): {', '.join(duplicates)}")
    sources = [{} for _ in names]
    # every name, override and data fit checked before any training
    specs = [model_spec(m, overrides, s) for m, s in zip(names, sources)]
    train_config = train_config.validate()
    info = data.dataset_info(data_config)
    for i, spec in enumerate(specs):
        if adapt_to_data:
            specs[i] = checks.adapt_to_data(spec, info.num_classes, info.image_size)
        else:
            checks.check_data(spec, info.num_classes, info.image_size)
    for spec, origin in zip(specs, sources):
        origin = {k: (labels or {}).get(k, v) if v == "given" else v for k, v in origin.items()}
        print(f"network {checks.describe(spec, origin)}", flush=True)
    kind = report.dataset_kind({}, info.image_size, data_config.dataset)
    directories, failures = [], {}
    for i, (name, dirname, spec) in enumerate(zip(names, dirnames, specs)):
        directory = os.path.join(output_dir, dirname)
        print(f"\n=== [{i + 1}/{len(names)}] {name}: {train_config.epochs} epoch(s) of the "
              f"{train_config.recipe} recipe on {data_config.dataset} -> {directory}",
              flush=True)
        try:
            training.train(spec, data_config, train_config, directory, strategy=strategy)
        except FloatingPointError as e:  # one diverging network must not stop the others
            print(f"=== {name} failed: {e}", flush=True)
            failures[name] = str(e)
            continue
        directories.append(directory)
    if not distribute.is_chief(strategy):
        print("=== trained with the other workers; the chief writes the comparison",
              flush=True)
        return None
    rows = sorted(_rows(directories, kind), key=lambda r: (r["budget"], r["equivalent_ops"]))
    print()
    print(report.format_paper_table(rows, kind))
    comparison = {
        "models": names, "kind": kind, "rows": rows, "failed": failures,
        "train": dataclasses.asdict(train_config),
        "data": {k: getattr(data_config, k) for k in DATA_SETTINGS},
        "num_classes": info.num_classes, "image_size": info.image_size,
    }
    mdir.write_json(os.path.join(output_dir, COMPARISON_JSON), comparison)
    if plot and rows:
        comparison["plot"] = plot_comparison(rows, os.path.join(output_dir, COMPARISON_PNG),
                                             title=_title(data_config, train_config, info))
        mdir.write_json(os.path.join(output_dir, COMPARISON_JSON), comparison)
    print(f"\nwrote {os.path.join(output_dir, COMPARISON_JSON)}"
          + (f" and {comparison['plot']}" if "plot" in comparison else ""))
    return comparison


def _title(data_config, train_config, info):
    examples = f", {data_config.max_examples} examples/split" if data_config.max_examples else ""
    return (f"{data_config.dataset} ({info.num_classes} classes, {info.image_size}px{examples}), "
            f"{train_config.epochs} epoch(s), recipe {train_config.recipe}")


def plot_comparison(rows, file_path, title=None):
    """PNG of top-1 (%) against Equivalent OPs (log x): our points filled and labelled,
    the papers' accuracies for the same networks hollow. Returns the file path."""
    import matplotlib.pyplot as plt

    fig = comparison_figure(rows, title)
    os.makedirs(os.path.dirname(os.path.abspath(file_path)), exist_ok=True)
    tmp = f"{file_path}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, file_path)
    return file_path


def comparison_figure(rows, title=None):
    """The matplotlib Figure of `plot_comparison`; labels placed without overlaps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    from matplotlib.transforms import Bbox

    from bnas_tf import plot

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    cmap = plt.get_cmap("tab10")
    paper_drawn = False
    labels = []
    for i, row in enumerate(rows):
        color = cmap(i % 10)
        x, y = row["equivalent_ops"], row.get("top1")
        if y is not None:
            ax.scatter([x], [y], s=60, color=color, zorder=3)
            labels.append(ax.annotate(f"{row['name']}\n{y:.1f}%", (x, y),
                                      textcoords="offset points", xytext=(6, 6), fontsize=8,
                                      color=color))
        for ref in row.get("paper", ()):
            if ref.get("top1") is None:
                continue
            ax.scatter([x], [ref["top1"]], s=60, facecolors="none", edgecolors=color, zorder=3)
            labels.append(ax.annotate(f"{ref['top1']:.1f}% ({ref.get('source', 'paper')})",
                                      (x, ref["top1"]), textcoords="offset points",
                                      xytext=(6, -10), fontsize=7, color=color))
            paper_drawn = True
    ax.set_xscale("log")
    ax.set_xlabel("Equivalent OPs (FLOPs + BiOPs / 64), log scale")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "accuracy vs. equivalent OPs", fontsize=9)
    xs = [r["equivalent_ops"] for r in rows]
    ax.set_xlim(min(xs) / 2, max(xs) * 3)
    ys = [r["top1"] for r in rows if r.get("top1") is not None]
    ys += [p["top1"] for r in rows for p in r.get("paper", ()) if p.get("top1") is not None]
    if ys:
        pad = max(2.0, 0.15 * (max(ys) - min(ys)))
        ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad))
    ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
    ax.grid(True, which="both", alpha=0.3)
    if paper_drawn:
        ax.scatter([], [], s=60, color="grey", label="ours (this run)")
        ax.scatter([], [], s=60, facecolors="none", edgecolors="grey", label="paper")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    # Labels of nearby points go above or below each other instead of overlapping.
    offsets = [(6, dy) for dy in (6, -10, 18, -22, 30, -34, 42, -46)]
    markers = [Bbox.from_bounds(*(ax.transData.transform(label.xy) - 5), 10, 10)
               for label in labels]  # each label's point: 10 x 10 pixels
    plot.declutter(fig, [(label, [label.xyann] + offsets) for label in labels],
                   obstacles=markers)
    return fig
