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
    assert "43.21" in text and "86.28 (BNAS T6)" in text and "~0.16" in text

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
    assert "xnor-nin" in text and "FLOPs(M)" in text
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
