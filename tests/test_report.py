"""tools/report.py and the paper-style table generator."""
import csv
import json

import bnas_tf  # noqa: F401
import pytest
from absl import flags as absl_flags

from bnas_tf import model_dir, report
from bnas_tf.models import presets

REQUIRED = ("name", "params", "flops", "biops", "equivalent_ops", "memory_bytes",
            "memory_saving", "speedup", "fully_binarized")


@pytest.fixture
def run_tool(capsys):
    from tools import report as tool
    flags = absl_flags.FLAGS

    def run(*args):
        flags.unparse_flags()
        flags(["report.py", *args])
        try:
            tool.main(["report.py"])
        finally:
            flags.unparse_flags()
        return capsys.readouterr().out
    return run


def test_tool_json_for_bnas_a(run_tool):
    rows = json.loads(run_tool("--models=bnas-a", "--format=json"))
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    for key in REQUIRED:
        assert key in row
    assert row["name"] == "bnas-a" and row["num_classes"] == 10 and row["image_size"] == 32
    assert row["params"] == pytest.approx(5_578_252, rel=0.01)
    assert row["equivalent_ops"] == pytest.approx(row["flops"] + row["biops"] / 64)
    assert row["fully_binarized"] is False  # float residual convs in the reduction cells
    assert row["bnas_flops"] == pytest.approx(0.14e8, rel=0.03)  # BNAS Table 9


def fake_results(directory, spec, top1, dataset="cifar10", image_size=32):
    model_dir.write_spec(str(directory), spec, 10, image_size, dataset=dataset)
    model_dir.write_json(str(directory / "metrics.json"),
                         {"top1": top1, "top5": 0.97, "loss": 1.0, "dataset": dataset})
    return str(directory)


def test_paper_table_reads_results_dir(tmp_path, run_tool):
    tiny = presets.resolve("xnor-nin", channels=12)
    run = fake_results(tmp_path / "nin_run", tiny, 0.4321)
    other = fake_results(tmp_path / "imagenet_run", tiny, 0.1111, dataset="imagenet2012")
    rows = report.paper_table("cifar", results=[run, other], models=["xnor-nin", "bnas-d"])
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"xnor-nin [nin_run]", "xnor-nin"}  # imagenet row/preset left out
    ours = by_name["xnor-nin [nin_run]"]
    assert ours["top1"] == pytest.approx(43.21) and ours["paper"] == []  # resized network
    preset = by_name["xnor-nin"]
    assert preset["top1"] is None
    assert [p["top1"] for p in preset["paper"]] == [86.28, 86.28]
    assert rows.index(ours) < rows.index(preset)  # smaller budget first
    text = report.format_paper_table(rows, "cifar")
    assert "43.21" in text and "86.28 @ ~16 (BNAS T6)" in text and "~0.16" in text
    assert "86.28 @ 12.13 (BARS T2)" in text  # the second reference: a line of its own
    assert max(len(line) for line in text.splitlines()) <= 100

    out = tmp_path / "table.csv"
    printed = run_tool("--table=cifar", f"--results={run}", "--models=xnor-nin",
                       f"--output={out}")
    assert "43.21" in printed and "xnor-nin [nin_run]" in printed
    with open(out, encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert {r["name"] for r in written} == {"xnor-nin [nin_run]", "xnor-nin"}
    assert any(r["top1"] == "43.21" for r in written)


def test_cost_rows_formats_and_errors(tmp_path):
    rows = report.cost_rows("xnor-nin", image_size=16, num_classes=7)
    assert rows[0]["image_size"] == 16 and rows[0]["num_classes"] == 7
    assert rows[0]["fully_binarized"] is True
    text = report.format_costs(rows)
    assert "xnor-nin" in text and "FLOPs" in text
    assert json.loads(report.to_json(rows))[0]["biops"] == rows[0]["biops"]
    report.write(rows, str(tmp_path / "rows.json"))
    assert json.load(open(tmp_path / "rows.json"))[0]["name"] == "xnor-nin"
    assert "all" not in report.expand_models("all") and "bnas-a" in report.expand_models("all")
    with pytest.raises(ValueError, match="no-such-net"):
        report.expand_models("bnas-a,no-such-net")
    with pytest.raises(FileNotFoundError, match="results directory"):
        report.paper_table("cifar", results=[str(tmp_path / "missing")], models=[])
    with pytest.raises(ValueError, match="unknown table"):
        report.paper_table("mnist")
    with pytest.raises(ValueError, match=".json or .csv"):
        report.write(rows, str(tmp_path / "rows.txt"))


def test_paper_reference_needs_the_papers_configuration():
    assert report.paper_references("bnas-d", presets.resolve("bnas-d"))[0].top1 == 57.69
    assert report.paper_references("bnas-a", presets.resolve("bnas-a", cells=8)) == ()
    # BNAS Table 13's BNAS-F is 12 cells x 84 channels.
    f = presets.resolve("bnas-f")
    expected = 1 if (f["cells"], f["channels"]) == (12, 84) else 0
    assert len(report.paper_references("bnas-f", f)) == expected


def test_costs_are_cached_and_equal_the_built_networks(tmp_path, monkeypatch):
    from bnas_tf import cost_cache

    monkeypatch.setenv("BNAS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cost_cache, "SNAPSHOT", str(tmp_path / "no_snapshot.json"))
    built = {}
    for name in ("bnas-mini", "xnor-nin"):
        built[name] = report.model_row(name)  # counted by building, then cached
    assert (tmp_path / "costs.json").is_file()

    def no_build(*args):
        raise AssertionError("a cached network was built again")
    monkeypatch.setattr(report, "count_costs", no_build)
    for name, row in built.items():
        assert report.model_row(name) == row
    # Another shape is another entry: counted, not served from the cache.
    with pytest.raises(AssertionError, match="built again"):
        report.model_row("bnas-mini", num_classes=100)


def test_shipped_cost_snapshot_holds_every_preset_as_built():
    """bnas_tf/preset_costs.json must match the code: after a change to the costed code or
    a new preset, rewrite it with `python -m bnas_tf.cost_cache` (a stale entry is never
    used, but the tables are slow again)."""
    from bnas_tf import cost_cache

    snapshot = json.loads(open(cost_cache.SNAPSHOT, encoding="utf-8").read())
    missing = [n for n in presets.names()
               if cost_cache.key(presets.resolve(preset=n),
                                 *report.shape_of(presets.resolve(preset=n))) not in snapshot]
    assert not missing, f"stale: run python -m bnas_tf.cost_cache (missing {missing})"
    for name in ("bnas-mini", "xnor-resnet18"):  # the snapshot's figures are the built ones
        spec = presets.resolve(preset=name)
        shape = report.shape_of(spec)
        cached = snapshot[cost_cache.key(spec, *shape)]
        from bnas_tf import files
        assert cached == files.plain(report.count_costs(spec, *shape))


def test_tables_fit_100_columns():
    big = {"flops": 1_192_620_000, "biops": 15_837_950_000, "equivalent_ops": 1_440_090_000,
           "bnas_flops": 618_010_000, "params": 160_010_000, "memory_bytes": 67.3 * 2**20,
           "memory_saving": 9.1, "speedup": 11.8, "fully_binarized": False,
           "num_classes": 1000, "image_size": 224, "budget": 18.25e8, "top1": 63.51,
           "top5": 83.91,
           "paper": [{"top1": 63.51, "top5": 83.91, "eq_ops": "639", "source": "BNAS T13 'G'"},
                     {"top1": 48.3, "top5": None, "eq_ops": None, "source": "BARS T2"}]}
    longest = max(presets.names(), key=len)
    rows = [dict(big, name=longest), dict(big, name="bnas-a")]
    for text in (report.format_costs(rows), report.format_paper_table(rows, "imagenet"),
                 report.format_paper_table(rows, "cifar")):
        assert max(len(line) for line in text.splitlines()) <= 100, text
        assert longest in text
    # A table wider than 100 columns is wrapped into blocks that repeat the first column.
    header = ["name"] + [f"column_{i:02d}" for i in range(12)]
    text = report._render(header, [["row"] + [f"{i * 1e6:.1f}" for i in range(12)]])
    blocks = text.split("\n\n")
    assert len(blocks) >= 2 and all(b.startswith("name") for b in blocks)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert all(f"column_{i:02d}" in text for i in range(12))
