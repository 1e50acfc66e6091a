"""The study's report: results.json (every trial), results.md, accuracy_vs_eqops.png.

results.md: the fairness statement (one data split, recipe, epochs and batch for
every final network; EqOPs target and achieved EqOPs per arm; the held-out test
split's size and list), per arm mean +- std (sample std, n-1) over seeds of top-1,
EqOPs, params, .tflite bytes, LceBconv2d count, latency and CPU-hours (search +
training), paired comparisons (per seed: arm - against; mean +- std of the
differences and the standard error), and per search how far its alphas moved from
uniform per epoch, saying plainly when a genotype came from alphas
indistinguishable from their initial values.
"""
from __future__ import annotations

import collections
import math
import os

import numpy as np

from bnas_tf import files
from bnas_tf.study import arms, trial as trial_lib

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT = "accuracy_vs_eqops.png"


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None  # one seed: no spread
    return float(np.mean(values)), std


def cpu_seconds(trial, trials):
    """A trial's CPU seconds of search (with its op selection) and training; a trial
    that reused another arm's search (``search_shared_with``) counts that search's."""
    own = trial["search_cpu_s"] + trial["train_cpu_s"]
    own += trial.get("stages", {}).get("select", {}).get("cpu_s", 0.0)
    owner = trial.get("search_shared_with")
    if owner:
        shared = [t for t in trials if t and t["arm"] == owner and t["seed"] == trial["seed"]]
        own += shared[0]["search_cpu_s"] if shared else float("nan")
    return own


def arm_rows(trials, config):
    rows = []
    for arm in config.arms:
        ts = [t for t in trials if t and t["arm"] == arm]
        if not ts:
            continue
        top1 = _stats([100 * t["top1"] for t in ts])
        cpu_h = [cpu_seconds(t, trials) / 3600 for t in ts]
        rows.append({
            "arm": arm, "n": len(ts), "top1_mean": top1[0], "top1_std": top1[1],
            "top5_mean": _stats([100 * t["top5"] for t in ts])[0],
            "eqops_m": _stats([t["equivalent_ops"] / 1e6 for t in ts])[0],
            "eqops_vs_target": _stats([t["equivalent_ops"] / t["target_equivalent_ops"]
                                       for t in ts])[0],
            "params_m": _stats([t["params"] / 1e6 for t in ts])[0],
            "bytes_k": _stats([t["bytes"] / 1024 for t in ts])[0],
            "bconv": _stats([t["bconv_ops"] for t in ts])[0],
            "latency_ms": _stats([t["latency_ms"] for t in ts])[0],
            "cpu_hours": float(np.sum(cpu_h)), "cpu_hours_per_trial": float(np.mean(cpu_h)),
            "matched": all(t["matched"] for t in ts),
        })
    return rows


def pairs(trials, config):
    """Paired comparisons over the seeds both arms finished: per-seed differences of
    top-1 (points), their mean, std, standard error, and a two-sided paired t-test
    (`scipy.stats.ttest_1samp` of the differences, n - 1 degrees of freedom) with the
    95% confidence interval of the mean difference."""
    by = {(t["arm"], t["seed"]): t for t in trials if t}
    out = []
    for a, b in arms.PAIRS:
        if a not in config.arms or b not in config.arms:
            continue
        seeds = sorted(s for (arm, s) in by if arm == a and (b, s) in by)
        if not seeds:
            continue
        diffs = [100 * (by[(a, s)]["top1"] - by[(b, s)]["top1"]) for s in seeds]
        mean, std = _stats(diffs)
        se = std / math.sqrt(len(diffs)) if std is not None else None
        p_value, ci = _paired_test(diffs, mean, se)
        out.append({"arm": a, "against": b, "seeds": seeds, "differences": diffs,
                    "mean": mean, "std": std, "se": se, "p_value": p_value, "ci95": ci,
                    "verdict": _verdict(a, b, diffs, mean, p_value, ci)})
    return out


def _paired_test(diffs, mean, se):
    """(two-sided p-value, 95% CI) of the mean of `diffs`; (None, None) for one seed.
    The same difference on every seed (no spread) is the t-test's limit: p -> 0 for a
    non-zero difference (as for nearly equal ones), 1 for none; its CI is the point."""
    if se is None:
        return None, None
    if se <= 1e-9 * max(1.0, abs(mean)):
        return (1.0 if abs(mean) < 1e-9 else 0.0), [mean, mean]
    from scipy import stats
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * se
    return float(stats.ttest_1samp(diffs, 0.0).pvalue), [mean - half, mean + half]


def _verdict(a, b, diffs, mean, p_value, ci):
    if p_value is None:
        return f"one seed only: {a} - {b} = {_fmt(mean, '+.2f')} points; no spread to judge by"
    shown_p = "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"
    if ci[0] == ci[1]:
        interval = f"the same difference on all {len(diffs)} seeds, no spread: {shown_p}"
    else:
        interval = (f"95% CI [{_fmt(ci[0], '+.2f')}, {_fmt(ci[1], '+.2f')}], paired t-test "
                    f"{shown_p}")
    if p_value < 0.05:
        better = a if mean > 0 else b
        return f"{better} better by {abs(mean):.2f} points ({interval})"
    return (f"no difference shown: {_fmt(mean, '+.2f')} points ({interval}: the interval "
            "holds zero)")


def _fmt(value, spec=".2f"):
    """`value` formatted; "-" for None; never "-0.00" (a difference that rounds to zero)."""
    if value is None:
        return "-"
    text = format(value, spec)
    if float(text) == 0:
        text = text.replace("-", "+" if "+" in spec else "", 1)
    return text


def _commit(code):
    """A trial's commit for the report ("not recorded" in trials of older studies)."""
    key = code["commit"][:10] if code.get("commit") else "not recorded"
    return key + (" (modified)" if code.get("modified") else "")


def markdown(study, trials, rows, comparisons):
    c, s = study.config, study.split
    done = [t for t in trials if t]
    lines = [
        "# Study: searched vs random vs hand-designed binary networks", "",
        f"{len(done)}/{len(trials)} trials finished"
        + ("" if len(done) == len(trials) else
           " (the study has not finished: this is the table so far; rerun its command "
           "to go on)") + f"; arms {', '.join(c.arms)}; {c.seeds} seed(s).", "",
        "## Arms", "",
        *(f"- `{name}`: {arms.ARMS[name].about}" for name in c.arms),
        "",
        "## Fairness", "",
        f"- Every final network: the same data ({s['pool_files']} images of {s['source']}, "
        f"{len(s['classes'])} classes; its 10% class-balanced hold-out validates), "
        f"augmentation, recipe `{c.recipe}`, {c.train_epochs} epoch(s), batch {c.train_batch}, "
        f"binary convs trained in {c.train_conv_dtype}.",
        f"- Sizes matched on equivalent OPs (FLOPs + BiOPs/64) to BNAS-A's cell at "
        f"{c.final_cells} cells x {c.final_channels} channels: target "
        f"{study.target / 1e6:.3f}M; achieved per arm in the table (`xnor-resnet18` "
        "is the unmatched original width).",
        f"- Held-out test split: {s['test_files']} images "
        + ("(an external --test_dir)" if s["external_test"] else
           f"({c.test_per_class} per class, drawn with split seed {c.split_seed})")
        + ", listed in `data/test_files.txt`. Searches and trainings read only "
        "`data/pool/`, which holds none of them.",
        f"- Searches: {c.search_epochs} epoch(s) at batch {c.search_batch}; BNAS supernet "
        f"{c.search_cells} cells x {c.search_channels} channels"
        + (f", on at most {c.search_examples} pool images (a cap, class-balanced)"
           if c.search_examples else "")
        + (f"; BARS base channels {list(c.bars_base_channels)}, max depth "
           f"{c.bars_max_depth}, budget {c.bars_flops_budget}M EqOPs (random BARS draws "
           "within it too), then width-matched like every arm"
           if {"bars", "bars-random"} & set(c.arms) else "") + ".", "",
        "## Per arm (mean +- std over seeds)", "",
        "| arm | n | top-1 % | top-5 % | EqOPs (M) | vs target | params (M) | .tflite KiB "
        "| LceBconv2d | latency ms | CPU-h total |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['n']} | {_fmt(r['top1_mean'])} +- {_fmt(r['top1_std'])} | "
            f"{_fmt(r['top5_mean'])} | {_fmt(r['eqops_m'], '.3f')} | "
            f"{_fmt(r['eqops_vs_target'], '.2f')}x | {_fmt(r['params_m'], '.3f')} | "
            f"{_fmt(r['bytes_k'], '.1f')} | {_fmt(r['bconv'], '.0f')} | "
            f"{_fmt(r['latency_ms'])} | {_fmt(r['cpu_hours'], '.3f')} |")
    lines += ["", "## Paired comparisons (top-1 points, per seed: arm - against)", ""]
    if not comparisons:
        lines.append("No pair of compared arms finished on a common seed.")
    for p in comparisons:
        diffs = ", ".join(_fmt(d, "+.2f") for d in p["differences"])
        lines.append(f"- **{p['arm']} vs {p['against']}** over seeds {p['seeds']}: "
                     f"[{diffs}]; mean {_fmt(p['mean'], '+.2f')} +- {_fmt(p['std'])} "
                     f"(SE {_fmt(p['se'])}). {p['verdict']}.")
    lines += ["", "## Did the alphas move?", ""]
    searched = [t for t in done if "alphas" in t]
    if not searched:
        lines.append("No search arm in this study.")
    for t in searched:
        a = t["alphas"]
        per = ", ".join(f"{v:.2e}" for v in a["per_epoch"])
        if t.get("selection"):  # the genotype was not read from the alphas
            lines.append(f"- {t['arm']} seed {t['seed']}: the alphas of "
                         f"{t.get('search_shared_with') or 'its'} search, {a['measure']} "
                         f"per epoch [{per}]; the genotype was selected by "
                         f"{t['selection']['rule']} on its last supernet, not from them.")
            continue
        lines.append(f"- {t['arm']} seed {t['seed']}: {a['measure']} per epoch [{per}]; "
                     f"genotype from epoch {a['derived_epoch']}.")
        if a["indistinguishable"]:
            lines.append(f"  **This genotype was derived from alphas indistinguishable from "
                         f"their initial values** ({_fmt(a['at_derived_epoch'], '.2e')} < "
                         f"{trial_lib.ALPHA_KL_MIN:g}): what it 'found' is noise.")
    commits = collections.Counter(_commit(t.get("code") or {}) for t in done)
    lines += ["", "Code of the trials (commit: trials): "
              + ", ".join(f"{k}: {n}" for k, n in commits.items()) + "."]
    lines += ["", "## Trials", "",
              "| arm | seed | top-1 % | EqOPs (M) | width | bytes | LceBconv2d | latency ms "
              "| search wall s | train wall s | CPU s | resumed | export check |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in done:
        check = "failed: see results.json" if t.get("export_error") else (
            "-" if t.get("agreement") is None else f"agreement {t['agreement']:.2f}")
        lines.append(
            f"| {t['arm']} | {t['seed']} | {100 * t['top1']:.2f} | "
            f"{t['equivalent_ops'] / 1e6:.3f} | {t['width']} | {t['bytes']:,} | "
            f"{t['bconv_ops']} | {_fmt(t['latency_ms'])} | {t['search_wall_s']:.0f} | "
            f"{t['train_wall_s']:.0f} | {cpu_seconds(t, done):.0f} | "
            f"{'yes' if t['resumed'] else 'no'} | {check} |")
    lines += ["", f"Plot: `{PLOT}`. Every trial: `{RESULTS_JSON}`.", ""]
    return "\n".join(lines)


def plot(trials, rows, config, path, target):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    cmap = plt.get_cmap("tab10")
    for i, row in enumerate(rows):
        ts = [t for t in trials if t and t["arm"] == row["arm"]]
        color = cmap(i % 10)
        xs = [t["equivalent_ops"] / 1e6 for t in ts]
        ys = [100 * t["top1"] for t in ts]
        ax.scatter(xs, ys, s=28, color=color, alpha=0.6, zorder=3)
        spread = "" if row["top1_std"] is None else f" +- {row['top1_std']:.1f}"
        ax.errorbar([row["eqops_m"]], [row["top1_mean"]], yerr=[row["top1_std"] or 0.0],
                    fmt="D", ms=9, color=color, mec="black", capsize=4, zorder=4,
                    label=f"{row['arm']}: {row['top1_mean']:.1f}{spread}% (n={row['n']})")
    ax.axvline(target / 1e6, color="grey", ls="--", lw=1, label="EqOPs target")
    ax.set_xlabel("equivalent OPs (M) = FLOPs + BiOPs / 64")
    ax.set_ylabel("held-out top-1 accuracy (%)")
    ax.set_title(f"{config.train_epochs} epoch(s), recipe {config.recipe}; dots: trials, "
                 "diamonds: mean +- std over seeds", fontsize=9)
    ax.margins(x=0.15, y=0.2)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write(study, trials, log=print):
    """Write the three report files from the finished trials; returns results.json's dict."""
    out = study.output_dir
    rows = arm_rows(trials, study.config)
    comparisons = pairs(trials, study.config)
    results = {"config": study.config.to_dict(), "split": study.split,
               "target_equivalent_ops": study.target,
               "train": {k: v for k, v in vars(study.train_config).items()},
               "arms": rows, "pairs": comparisons,
               "finished": sum(1 for t in trials if t), "total": len(trials),
               "trials": [t for t in trials if t]}
    files.write_json(os.path.join(out, RESULTS_JSON), results)
    files.write_atomic(os.path.join(out, RESULTS_MD),
                       markdown(study, trials, rows, comparisons).encode("utf-8"))
    if rows:
        plot(trials, rows, study.config, os.path.join(out, PLOT), study.target)
    log(f"report: {os.path.join(out, RESULTS_MD)} ({results['finished']}/{len(trials)} trials)")
    return results
