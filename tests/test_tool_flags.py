"""Every tool applies or refuses every flag it accepts; a flag for another family or a
preset for other data is refused; every run prints the size it builds and where each
value came from (issue 15, "silent substitutions")."""
import importlib.util
import json
import os

import bnas_tf  # noqa: F401
import pytest
from absl import app

from bnas_tf import compare, data, genotypes, recipes, training
from bnas_tf import model_dir as mdir
from bnas_tf.models import bars, presets

from tests.conftest import REPO

MISSING = "/nonexistent/bnas_data"  # the old code failed on it: fast, and another message


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _run(name, *args):
    """Run tools/NAME.py in-process; returns what it raised (None when it returned)."""
    tool = _tool(name)
    argv = [f"{name}.py", *args]
    try:
        tool.FLAGS(argv)
        tool.main(argv[:1])
    except (app.UsageError, SystemExit, ValueError, FileNotFoundError) as e:
        return e
    finally:
        tool.FLAGS.unparse_flags()
    return None


def _message(error):
    return str(error.code if isinstance(error, SystemExit) else error)


FOLDER = ("--dataset=folder", f"--data_dir={MISSING}")
UNUSED = [  # (tool, the flag it accepts but does not use, the rest of a command line)
    ("train", "--model_dir=runs/x", ("--preset=bnas-a", "--output_dir=o", *FOLDER)),
    ("train", "--split=validation", ("--preset=bnas-a", "--output_dir=o", *FOLDER)),
    ("evaluate", "--learning_rate=0.1", (f"--model_dir={MISSING}",)),
    ("evaluate", "--image_size=64", (f"--model_dir={MISSING}",)),
    ("evaluate", "--output_dir=o", (f"--model_dir={MISSING}",)),
    ("export", "--batch_size=8", (f"--model_dir={MISSING}", "--output=m.tflite")),
    ("export", "--data_service=grpc://localhost:5000",
     (f"--model_dir={MISSING}", "--output=m.tflite")),
    ("export", "--split=validation", (f"--model_dir={MISSING}", "--output=m.tflite")),
    ("export", "--data_dir=d", (f"--model_dir={MISSING}", "--output=m.tflite", "--samples=0")),
    ("compare", "--flops_budget=1e6", ("--models=bnas-a", "--output_dir=o", *FOLDER)),
    ("compare", "--preset=bnas-mini", ("--models=bnas-a", "--output_dir=o", *FOLDER)),
    ("compare", "--model_dir=m", ("--models=bnas-a", "--output_dir=o", *FOLDER)),
    ("size", "--cells=5", ("--genotype=bnas_a", "--flops_budget=1e7", *FOLDER)),
    ("size", "--models=bnas-a", ("--genotype=bnas_a", "--flops_budget=1e7", *FOLDER)),
    ("size", "--epochs=3", ("--genotype=bnas_a", "--flops_budget=1e7", *FOLDER)),
    ("size", "--gammas=1,2", ("--genotype=bnas_a", "--flops_budget=1e7", *FOLDER)),
    ("pipeline", "--epochs=3", ("--output_dir=o", *FOLDER)),
    ("pipeline", "--stop_after=1", ("--output_dir=o", *FOLDER)),
    ("pipeline", "--train_cells=5", ("--output_dir=o", "--method=bars", *FOLDER)),
    ("report", "--image_size=64", ("--table=cifar", f"--results={MISSING}")),
]


@pytest.mark.parametrize("tool,flag,rest", UNUSED, ids=[f"{t}{f.split('=')[0]}"
                                                         for t, f, _ in UNUSED])
def test_every_tool_refuses_a_flag_it_does_not_use(tool, flag, rest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = _run(tool, *rest, flag)
    assert isinstance(error, app.UsageError), error
    assert flag.split("=")[0] in _message(error)


def test_compare_refuses_the_issue_command_before_any_training(tmp_path):
    # (refused before the data is read; the old code trained the full 20 x 36 bnas-a)
    error = _run("compare", "--models=bnas-a,xnor-resnet18", "--cells=5", "--channels=8",
                 *FOLDER, f"--output_dir={tmp_path}/o")
    assert isinstance(error, app.UsageError)
    assert "--cells" in _message(error) and "xnor-resnet18" in _message(error)
    assert not os.path.exists(tmp_path / "o")


def test_compare_applies_cells_channels_and_residual_to_every_model(cifar_dir, tmp_path, capsys):
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"family": "bnas", "genotype": "bnas_a", "cells": 2,
                                "channels": 4}))
    data_config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), batch_size=16,
                                  max_examples=32)
    config = recipes.recipe("adam_cosine", epochs=1, batch_size=16, verbose=0,
                             validation_freq=0)
    compare.compare([str(tiny)], data_config, config, str(tmp_path / "o"), plot=False,
                    overrides={"cells": 3, "channels": 6, "residual": "binary"},
                    labels={"cells": "--cells", "channels": "--channels"})
    spec = mdir.read_spec(tmp_path / "o" / "tiny")[0]
    assert (spec["cells"], spec["channels"], spec["residual"]) == (3, 6, "binary")
    assert "tiny: bnas network, 3 cells (--cells) x 6 channels (--channels)" in \
        capsys.readouterr().out


def _bars_genotype(path):
    genotypes.save(bars.random_genotype(0, base_channels=(8, 16, 32), max_depth=1), str(path))
    return str(path)


def test_a_flag_for_another_family_is_refused_naming_it(tmp_path):
    geno = _bars_genotype(tmp_path / "bars.json")
    for kwargs, flag in (({"cells": 5}, "--cells"), ({"channels": 8}, "--channels"),
                         ({"residual": "binary"}, "--residual")):
        with pytest.raises(ValueError, match=f"^{flag} does not apply to a bars network"):
            presets.resolve(genotype=geno, **kwargs)
    with pytest.raises(ValueError, match="^--cells does not apply to a baseline network"):
        presets.resolve(preset="xnor-resnet18", cells=5)
    assert presets.resolve(preset="xnor-resnet18", channels=16)["channels"] == 16  # applies
    for args in ((f"--genotype={geno}", "--cells=5", "--channels=8"),
                 ("--preset=xnor-resnet18", "--drop_path=0.1")):
        error = _run("train", *args, "--output_dir=o", *FOLDER)
        assert isinstance(error, app.UsageError) and "does not apply" in _message(error), error


def test_a_preset_for_other_data_is_refused_before_anything_is_written(cifar_dir, tmp_path):
    # an ImageNet-stem network (as bnas-d), tiny so the old code trained it in seconds
    imagenet = {"family": "bnas", "genotype": "bnas_imagenet", "cells": 2, "channels": 8,
                "stem": "imagenet", "name": "tiny-imagenet"}
    data_config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=32)
    config = recipes.recipe("adam_cosine", epochs=1, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="tiny-imagenet does not fit the data: 32 px images "
                                         r"\(it is built for 224 px\) and 10 classes"):
        training.train(imagenet, data_config, config, str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o")
    from bnas_tf.models import checks
    with pytest.raises(ValueError, match="--adapt_to_data"):
        checks.check_data(presets.resolve(preset="bnas-d"), 10, 32)
    checks.check_data(presets.resolve(preset="bnas-a"), 10, 32)  # made for it: fits
    checks.check_data(presets.resolve(genotype="bnas_a"), 4, 224)  # a genotype adapts


def test_adapt_to_data_is_printed_and_recorded(cifar_dir, tmp_path, capsys):
    preset = tmp_path / "tiny-imagenet.json"
    preset.write_text(json.dumps({"family": "bnas", "genotype": "bnas_imagenet", "cells": 2,
                                  "channels": 4, "stem": "imagenet"}))
    error = _run("train", f"--preset={preset}", "--adapt_to_data", "--dataset=folder",
                 f"--data_dir={cifar_dir}", "--max_examples=32", "--batch_size=16",
                 "--epochs=1", "--recipe=adam_cosine", "--validation_freq=0", "--progress=none",
                 f"--output_dir={tmp_path}/o")
    assert error is None
    out = capsys.readouterr().out
    assert "adapting tiny-imagenet to the data (--adapt_to_data): 32 px images" in out
    spec = mdir.read_spec(tmp_path / "o")[0]
    assert spec["stem"] == "cifar" and spec["num_classes"] == 10
    assert spec["adapted_from"] == {"stem": "imagenet", "num_classes": 1000, "image_size": 224}


@pytest.fixture
def searched(tmp_path):
    """A search directory whose genotype was searched at 5 cells x 8 channels."""
    directory = tmp_path / "search"
    directory.mkdir()
    genotypes.save(genotypes.BNAS_A, str(directory / "genotype.json"))
    (directory / "search_config.json").write_text(json.dumps(  # as tools/search.py writes it
        {"search": {"method": "bnas", "bnas": {"cells": 5, "channels": 8}}, "data": {}}))
    return directory


def test_every_run_prints_the_size_it_builds_and_where_it_came_from(
        searched, cifar_dir, tmp_path, monkeypatch, capsys):
    built = []
    monkeypatch.setattr(training, "train", lambda spec, *a, **k: built.append(spec) or {})
    folder = ("--dataset=folder", f"--data_dir={cifar_dir}", "--max_examples=32")
    assert _run("train", f"--genotype={searched}/genotype.json", *folder, "--output_dir=o") \
        is None
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("network ")]
    assert built[-1]["cells"] == 8 and len(line) == 1
    assert "8 cells (default) x 16 channels (default)" in line[0]
    assert f"searched at 5 cells x 8 channels ({searched}/search_config.json)" in line[0]
    assert _run("train", "--preset=bnas-a", "--cells=5", *folder, "--output_dir=o") is None
    assert "bnas-a: bnas network, 5 cells (--cells) x 36 channels (preset bnas-a)" in \
        capsys.readouterr().out
    # compare: one line per model, before any training
    assert _run("compare", "--models=bnas-mini,xnor-resnet18", "--channels=16", *folder,
                f"--output_dir={tmp_path}/c") is not None  # the stub writes no results
    out = capsys.readouterr().out
    assert "bnas-mini: bnas network, 10 cells (preset bnas-mini) x 16 channels (--channels)" in out
    assert "xnor-resnet18: baseline resnet-18, 16 channels (--channels)" in out


def test_pipeline_and_size_print_the_size_first(cifar_dir, tmp_path, monkeypatch, capsys):
    from bnas_tf import pipeline, sizing

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(pipeline.runner, "run_search", stop)
    monkeypatch.setattr(sizing, "size", stop)
    folder = ("--dataset=folder", f"--data_dir={cifar_dir}", "--max_examples=32")
    with pytest.raises(Stop):
        _run("pipeline", "--cells=5", "--channels=8", "--train_cells=6", *folder,
             f"--output_dir={tmp_path}/p")
    assert ("network to train: the searched cell, 6 cells (--train_cells) x 8 channels "
            "(the search's --channels)") in capsys.readouterr().out
    with pytest.raises(Stop):
        _run("size", "--genotype=bnas_a", "--flops_budget=1e7", "--min_cells=4",
             "--max_cells=6", *folder)
    assert "sizing a bnas network (cell from --genotype=bnas_a): cells 4..6" in \
        capsys.readouterr().out


def test_evaluate_applies_data_flags_on_top_of_the_training_data(cifar_dir, tmp_path, capsys):
    data_config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), max_examples=40)
    config = recipes.recipe("adam_cosine", epochs=1, batch_size=16, verbose=0,
                             validation_freq=0)
    out = tmp_path / "m"
    training.train(presets.resolve(genotype="bnas_a", cells=2, channels=4), data_config,
                   config, str(out))
    capsys.readouterr()
    assert _run("evaluate", f"--model_dir={out}", "--max_examples=8", "--progress=none") is None
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["examples"] == 8 and printed["data_dir"] == str(cifar_dir)  # not 40
