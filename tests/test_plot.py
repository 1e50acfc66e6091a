"""Cell diagrams and alpha heatmaps."""
import pathlib
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnas_tf import genotypes, plot

REPO = pathlib.Path(__file__).resolve().parents[1]


def _texts(fig):
    return {t.get_text() for ax in fig.axes for t in ax.texts} | \
        {ax.get_title() for ax in fig.axes}


def test_bnas_diagram_shows_nodes_ops_and_the_inter_cell_skip(tmp_path):
    fig = plot.genotype_figure(genotypes.BNAS_IMAGENET)
    texts = _texts(fig)
    assert {"c_{k-2}", "c_{k-1}", "c_{k}", "0", "1", "2", "3"} <= texts
    assert {"conv_3x3", "dil_conv_3x3", "max_pool_3x3"} <= texts
    assert {"skip (identity)", "residual BN+conv2x2/2"} <= texts
    assert {"normal cell", "reduction cell"} <= texts
    skips = [p for ax in fig.axes for p in ax.patches
             if p.get_edgecolor()[:3] == plt.matplotlib.colors.to_rgb(plot.SKIP_COLOR)]
    assert len(skips) == 2 and all(p.get_linestyle() == "--" for p in skips)
    plt.close(fig)
    # A DARTS-template genotype has no inter-cell skip.
    darts = genotypes.BnasGenotype(genotypes.BNAS_A.normal, genotypes.BNAS_A.reduce,
                                   template="darts")
    fig = plot.genotype_figure(darts)
    assert "skip (identity)" not in _texts(fig)
    plt.close(fig)


def test_files_by_extension(tmp_path):
    png, svg = tmp_path / "cell.png", tmp_path / "cell.svg"
    plot.plot_genotype("bnas_a", str(png))
    plot.plot_genotype(genotypes.BNAS_A, str(svg))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:2000]


def test_bars_diagram_titles_carry_width_and_depth(tmp_path):
    cell = ["bin_conv_3x3", "shortcut", "none", "bin_conv_3x3", "none", "shortcut",
            "bin_conv_3x3", "none", "none", "bin_conv_3x3"]
    genotype = genotypes.BarsGenotype(
        stages=[genotypes.BarsStage(0.5, 2, cell), genotypes.BarsStage(1.0, 1, cell),
                genotypes.BarsStage(0.25, 3, cell)],
        reduce_cell=cell)
    fig = plot.genotype_figure(genotype)
    titles = {ax.get_title() for ax in fig.axes}
    assert "stage 0: width 0.5 (24 ch), depth 2/3" in titles
    assert "stage 2: width 0.25 (48 ch), depth 3/3" in titles
    assert "reduction cell" in titles
    plt.close(fig)
    plot.plot_genotype(genotype, str(tmp_path / "bars.png"))
    assert (tmp_path / "bars.png").stat().st_size > 1000


def test_alpha_heatmap_is_an_rgb_image():
    probs = np.full((14, 7), 1 / 7)
    probs[3, 2] = 0.9
    image = plot.alpha_heatmap(probs, [f"e{i}" for i in range(14)], ["op"] * 7, "t")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 100 and image.std() > 10


def test_cli_draws(tmp_path):
    out = tmp_path / "a.svg"
    ok = subprocess.run([sys.executable, str(REPO / "tools" / "plot_genotype.py"),
                         "--genotype=bnas_a", f"--output={out}"],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert b"<svg" in out.read_bytes()[:2000]


def test_cli_rejects_bad_input(tmp_path):
    sys.path.insert(0, str(REPO))
    from absl import app
    from absl.testing import flagsaver

    from tools import plot_genotype

    if not plot_genotype.FLAGS.is_parsed():
        plot_genotype.FLAGS.mark_as_parsed()
    cases = ((dict(genotype="bnas_a", output=str(tmp_path / "a.gif")), "--output must end in"),
             (dict(genotype="no_such", output=str(tmp_path / "a.png")), "neither a released"),
             (dict(genotype="bnas_a", output=str(tmp_path / "no" / "a.png")), "does not exist"))
    for values, message in cases:
        with flagsaver.flagsaver(**values):
            with pytest.raises(app.UsageError, match=message):
                plot_genotype.main(["plot_genotype.py"])
    assert not list(tmp_path.iterdir())


def test_cell_diagram_labels_do_not_overlap():
    import matplotlib.pyplot as plt

    for genotype in ("bnas_imagenet", "bnas_a"):  # bnas_imagenet's labels used to collide
        fig = plot.genotype_figure(genotype, title=genotype)
        try:
            assert plot.text_overlaps(fig) == [], genotype
            assert len([t for ax in fig.axes for t in ax.texts]) >= 20
        finally:
            plt.close(fig)


def test_comparison_plot_labels_do_not_overlap():
    import matplotlib.pyplot as plt

    from bnas_tf import compare

    rows = [{"name": n, "equivalent_ops": e, "top1": t, "paper": p} for n, e, t, p in (
        ("bnas-a", 98.8e6, 11.2, [{"top1": 92.7, "source": "BNAS T6"},
                                  {"top1": 92.7, "source": "BARS T2"}]),
        ("xnor-resnet18", 16.6e6, 12.1, [{"top1": 88.82, "source": "BNAS T6"},
                                         {"top1": 90.55, "source": "BARS T2"}]),
        ("binarynet-resnet18", 16.6e6, 12.4, [{"top1": 89.95, "source": "BNAS T6"}]),
        ("xnor-nin", 18.1e6, 11.8, [{"top1": 86.28, "source": "BNAS T6"}]))]
    fig = compare.comparison_figure(rows, "four networks")
    try:
        assert plot.text_overlaps(fig) == []
        assert len(fig.axes[0].texts) == 10  # 4 of ours + 6 paper figures, all drawn
    finally:
        plt.close(fig)
