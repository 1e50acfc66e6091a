"""Pictures of architectures with matplotlib (no graphviz): cell diagrams of BNAS and
BARS genotypes, and heatmaps of op probabilities for TensorBoard.

* `plot_genotype(genotype, path)` draws a BNAS genotype's normal and reduce cells
  (inputs c_{k-2}, c_{k-1}, the 4 nodes, op-labelled edges, the concat output and
  the inter-cell skip as a dashed red line), or a BARS genotype's per-stage dense
  cells and reduce cell (width and depth in the titles). The format follows the
  file extension (.png, .svg, .pdf).
* `alpha_heatmap(probs, row_labels, col_labels)` renders an edges x ops
  probability matrix to an HxWx3 uint8 image (for `tf.summary.image`).
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402

from bnas_tf import genotypes, ops  # noqa: E402

SKIP_COLOR = "#d62728"
NODE_STYLE = {"input": "#9ecae1", "node": "#fdd0a2", "output": "#a1d99b"}


def op_color(op):
    if op == ops.ZERO:
        return "#999999"
    if "pool" in op:
        return "#1f77b4"
    if op in ("shortcut", "identity", "skip_connect"):
        return "#2ca02c"
    if op in ops.LEARNABLE:
        return "#ff7f0e"
    return "#555555"


def _node(ax, xy, text, kind):
    ax.text(xy[0], xy[1], text, ha="center", va="center", fontsize=9, zorder=4,
            bbox=dict(boxstyle="round,pad=0.35", fc=NODE_STYLE[kind], ec="black", lw=0.8))


LABEL_POSITIONS = (0.5, 0.38, 0.62, 0.28, 0.72, 0.2, 0.8)  # along an edge, tried in order


def _arc_point(a, b, rad, t):
    """Point at parameter t of the quadratic Bezier that matplotlib's arc3 draws a -> b."""
    (x0, y0), (x1, y1) = a, b
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
    return ((1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t ** 2 * x1,
            (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t ** 2 * y1)


def _edge(ax, a, b, label=None, color="black", style="-", rad=0.0, width=1.2,
          label_pos=0.5):
    arrow = FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=11, color=color,
                            linestyle=style, linewidth=width,
                            connectionstyle=f"arc3,rad={rad}", shrinkA=14, shrinkB=14,
                            zorder=2)
    ax.add_patch(arrow)
    if label:
        text = ax.text(*_arc_point(a, b, rad, label_pos), label, fontsize=6.5, ha="center",
                       va="center", color=color, zorder=3,
                       bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
        positions = [label_pos] + [t for t in LABEL_POSITIONS if t != label_pos]
        _pending(ax).append((text, [_arc_point(a, b, rad, t) for t in positions]))


def _pending(ax):
    """Edge labels of `ax` still to be placed by `declutter` ([(text, candidates)])."""
    if not hasattr(ax, "_bnas_labels"):
        ax._bnas_labels = []
    return ax._bnas_labels


def _overlap(a, b):
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _box(text, renderer, pad):
    """Display-pixel box of a text, its background patch included, grown by `pad`."""
    patch = text.get_bbox_patch()
    if patch is not None:
        text.update_bbox_position_size(renderer)
        return patch.get_window_extent(renderer).padded(pad)
    return text.get_window_extent(renderer).padded(pad)


def text_overlaps(fig, pad=0.0):
    """Pairs of texts of `fig`'s axes whose boxes (display pixels, grown by `pad`) overlap."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), _box(t, renderer, pad))
             for ax in fig.axes for t in ax.texts if t.get_text() and t.get_visible()]
    return [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if _overlap(a[1], b[1])]


def declutter(fig, items=None, pad=2.0, obstacles=()):
    """Place texts so that their boxes do not overlap: each of `items` ([(text,
    [position, ...])], default: the edge labels the cell drawings registered) goes to the
    first candidate position (data coordinates, or a text offset for annotations) that
    overlaps no text placed before it, no fixed text and no `obstacles` (matplotlib Bboxes
    in display pixels, e.g. markers), else to the least overlapping one. Call after the
    layout is final (tight_layout)."""
    renderer = fig.canvas.get_renderer()
    if items is None:
        items = [item for ax in fig.axes for item in _pending(ax)]
        for ax in fig.axes:
            ax._bnas_labels = []
    moving = {id(text) for text, _ in items}
    placed = [_box(t, renderer, pad) for ax in fig.axes for t in ax.texts
              if id(t) not in moving and t.get_text()] + list(obstacles)
    for text, candidates in items:
        best = None
        for position in candidates:
            text.set_position(position)
            box = _box(text, renderer, pad)
            cost = sum(_overlap(box, p) for p in placed)
            if best is None or cost < best[0]:
                best = (cost, position, box)
            if not cost:
                break
        text.set_position(best[1])
        placed.append(best[2])


def draw_bnas_cell(ax, edges, concat, reduction=False, template="bnas", title=None):
    """Draw one BNAS/DARTS cell: edges = [(op, input), ...] two per node."""
    n_nodes = len(edges) // 2
    pos = {0: (0.0, 2.0), 1: (0.0, -2.0)}
    for i in range(n_nodes):
        pos[2 + i] = (1.8 + 1.7 * i, 0.9 if i % 2 == 0 else -0.9)
    out = (1.8 + 1.7 * n_nodes + 0.6, 0.0)
    _node(ax, pos[0], "c_{k-2}", "input")
    _node(ax, pos[1], "c_{k-1}", "input")
    for i in range(n_nodes):
        _node(ax, pos[2 + i], str(i), "node")
    _node(ax, out, "c_{k}", "output")
    for k, (op, src) in enumerate(edges):
        dst = 2 + k // 2
        (_, y0), (_, y1) = pos[src], pos[dst]
        # Longer edges bend away from the nodes they would cross.
        rad = 0.0 if dst - src == 1 or (src < 2 and dst == 2) else (0.3 if y1 < y0 else -0.3)
        style = ":" if op == ops.ZERO else "-"
        _edge(ax, pos[src], pos[dst], op.replace("bin_", ""), op_color(op), style, rad)
    for i in concat:
        _edge(ax, pos[i], out, color="#777777", width=0.8)
    if template == "bnas":
        label = "residual BN+conv2x2/2" if reduction else "skip (identity)"
        _edge(ax, pos[1], out, label, SKIP_COLOR, "--", rad=0.35, width=1.6, label_pos=0.6)
    ax.set_xlim(-0.8, out[0] + 0.8)
    ax.set_ylim(-3.0, 3.0)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)


def draw_dense_cell(ax, cell, nodes=genotypes.NODES, title=None):
    """Draw a BARS dense cell: input node 0 and nodes 1..nodes, one op per edge
    (``none`` edges drawn dotted grey)."""
    pos = {j: (1.6 * j, 0.0 if j in (0, nodes) else (0.8 if j % 2 else -0.8))
           for j in range(nodes + 1)}
    for j in range(nodes + 1):
        _node(ax, pos[j], "in" if j == 0 else ("out" if j == nodes else str(j)),
              "input" if j == 0 else ("output" if j == nodes else "node"))
    for k, (i, j) in enumerate(genotypes.dense_edges(nodes)):
        op = cell[k]
        rad = 0.0 if j - i == 1 else 0.3 * (1 if (i + j) % 2 else -1) * min(1.0, (j - i) / 2)
        style = ":" if op == ops.ZERO else "-"
        _edge(ax, pos[i], pos[j], op.replace("bin_", ""), op_color(op), style, rad)
    ax.set_xlim(-0.8, 1.6 * nodes + 0.8)
    ax.set_ylim(-1.8, 1.8)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)


def genotype_figure(genotype, title=None):
    """A matplotlib Figure of a BNAS or BARS genotype."""
    genotype = genotypes.load(genotype)
    if isinstance(genotype, genotypes.BnasGenotype):
        fig, axes = plt.subplots(2, 1, figsize=(10, 8.5))
        draw_bnas_cell(axes[0], genotype.normal, genotype.normal_concat, False,
                       genotype.template, "normal cell")
        draw_bnas_cell(axes[1], genotype.reduce, genotype.reduce_concat, True,
                       genotype.template, "reduction cell")
    else:
        rows = len(genotype.stages) + 1
        fig, axes = plt.subplots(rows, 1, figsize=(8, 2.9 * rows))
        axes = np.atleast_1d(axes)
        for i, (stage, base) in enumerate(zip(genotype.stages, genotype.base_channels)):
            channels = int(round(stage.width * base))
            draw_dense_cell(axes[i], stage.cell, title=(
                f"stage {i}: width {stage.width:g} ({channels} ch), "
                f"depth {stage.depth}/{genotype.max_depth}"))
        draw_dense_cell(axes[-1], genotype.reduce_cell, title="reduction cell")
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    declutter(fig)
    return fig


def plot_genotype(genotype, path, title=None):
    """Save the diagram of `genotype` to `path` (format from the extension)."""
    fig = genotype_figure(genotype, title)
    try:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def alpha_heatmap(probs, row_labels, col_labels, title=None):
    """An edges x ops probability matrix as an HxWx3 uint8 image."""
    probs = np.asarray(probs, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * probs.shape[1], 1.0 + 0.28 * probs.shape[0]))
    try:
        im = ax.imshow(probs, cmap="viridis", aspect="auto", vmin=0.0,
                       vmax=max(float(probs.max()), 1e-6))
        ax.set_yticks(range(len(row_labels)), labels=row_labels, fontsize=7)
        ax.set_xticks(range(len(col_labels)),
                      labels=[c.replace("bin_", "") for c in col_labels],
                      fontsize=7, rotation=45, ha="right")
        for (r, c), p in np.ndenumerate(probs):
            ax.text(c, r, f"{p:.2f}", ha="center", va="center", fontsize=5.5,
                    color="white" if p < 0.6 * probs.max() else "black")
        fig.colorbar(im, ax=ax, fraction=0.05)
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
    finally:
        plt.close(fig)
    buf.seek(0)
    image = plt.imread(buf)  # float RGBA in [0, 1]
    return (np.clip(image[..., :3], 0, 1) * 255).astype(np.uint8)
