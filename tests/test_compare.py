"""Comparison runs: every model trained under the same settings, table, JSON and plot."""
import json
import os

import bnas_tf  # noqa: F401
import pytest

from bnas_tf import compare, data, recipes, training

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _preset(directory, name, spec):
    path = os.path.join(directory, f"{name}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def test_compare_two_tiny_models_writes_table_json_and_plot(cifar_dir, tmp_path, capsys):
    models = [_preset(tmp_path, "tiny-bnas", {"family": "bnas", "genotype": "bnas_a",
                                              "cells": 2, "channels": 4}),
              _preset(tmp_path, "tiny-nin", {"family": "baseline", "arch": "nin",
                                             "channels": 8})]
    data_config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), batch_size=16,
                                  image_size=32, max_examples=32)
    train_config = recipes.recipe("adam_cosine", epochs=1, batch_size=16, verbose=0)
    out = tmp_path / "out"
    result = compare.compare(models, data_config, train_config, str(out))

    written = json.loads((out / compare.COMPARISON_JSON).read_text())
    rows = {r["model"]: r for r in written["rows"]}
    assert set(rows) == {"tiny-bnas", "tiny-nin"}
    for name, row in rows.items():
        assert 0.0 <= row["top1"] <= 100.0
        assert row["equivalent_ops"] > 0
        assert os.path.isfile(os.path.join(row["results_dir"], "metrics.json"))
        assert os.path.basename(row["results_dir"]) == name  # DIR/<model>/
    # both trained under the same settings
    assert written["train"]["epochs"] == 1 and written["data"]["max_examples"] == 32
    for name in rows:
        config = json.loads((out / name / training.TRAIN_CONFIG).read_text())
        assert config["train"]["recipe"] == "adam_cosine" and config["train"]["epochs"] == 1
    # costs differ and are ordered as counted: the NiN is the cheaper network
    assert rows["tiny-nin"]["equivalent_ops"] < rows["tiny-bnas"]["equivalent_ops"]
    png = out / compare.COMPARISON_PNG
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert result["plot"] == str(png)
    printed = capsys.readouterr().out
    assert "tiny-bnas" in printed and "tiny-nin" in printed and "EqOPs" in printed


def test_a_non_chief_worker_trains_but_leaves_the_comparison_to_the_chief(
        cifar_dir, tmp_path, monkeypatch, capsys):
    """Under multi_worker every worker runs compare; two writers of comparison.json
    (read from directories the chief is writing) would race: only the chief writes."""
    from bnas_tf import distribute
    model = _preset(tmp_path, "tiny-nin", {"family": "baseline", "arch": "nin", "channels": 8})
    data_config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), batch_size=16,
                                  image_size=32, max_examples=32)
    train_config = recipes.recipe("adam_cosine", epochs=1, batch_size=16, verbose=0)
    monkeypatch.setattr(distribute, "is_chief", lambda strategy: False)
    out = tmp_path / "out"
    assert compare.compare([model], data_config, train_config, str(out)) is None
    assert not (out / compare.COMPARISON_JSON).exists()
    assert not (out / compare.COMPARISON_PNG).exists()
    assert "the chief writes the comparison" in capsys.readouterr().out


def test_unknown_model_fails_before_any_training(cifar_dir, tmp_path):
    data_config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=32)
    with pytest.raises(ValueError, match="no-such-net"):
        compare.compare(["bnas-mini", "no-such-net"], data_config,
                        recipes.recipe("adam_cosine", epochs=1), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_same_model_twice_is_refused(cifar_dir, tmp_path):
    data_config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=32)
    with pytest.raises(ValueError, match="given twice"):
        compare.compare(["bnas-mini", "bnas-mini"], data_config,
                        recipes.recipe("adam_cosine", epochs=1), str(tmp_path / "out"))
