"""A model directory whose weights.h5 does not match its spec.json is refused by every
loader (evaluate, export, float twin, report/compare rows) with one line naming the
layers (issue 14, item 1)."""
import json

import bnas_tf  # noqa: F401
import pytest

from bnas_tf import data, export, models, report, training
from bnas_tf import model_dir as mdir
from bnas_tf.models import bars as bars_models
from bnas_tf.models import presets


def make_dir(directory, spec, classes=10, size=16):
    directory.mkdir()
    mdir.write_spec(str(directory), spec, classes, size, dataset="folder")
    models.build(spec, classes, size).save_weights(str(directory / mdir.WEIGHTS))
    mdir.write_json(str(directory / mdir.METRICS), {"top1": 0.5, "top5": 1.0, "loss": 1.0})
    return directory


def edit_spec(directory, change):
    record = json.loads((directory / mdir.SPEC).read_text())
    change(record["spec"])
    (directory / mdir.SPEC).write_text(json.dumps(record))


def one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as error:
        fn(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_bnas_dir_with_more_cells_than_saved_is_refused_everywhere(tmp_path, cifar_dir):
    spec = presets.resolve(genotype="bnas_a", cells=3, channels=4)
    directory = make_dir(tmp_path / "run", spec)
    assert mdir.load_model(str(directory)).name  # matching: loads
    edit_spec(directory, lambda s: s.update(cells=4))
    message = one_line_error("layers without saved weights: cell3", mdir.load_model,
                             str(directory))
    assert "saved weights without a layer" not in message
    one_line_error("layers without saved weights", export.export, str(directory))
    one_line_error("layers without saved weights", export.float_twin, str(directory))
    one_line_error("layers without saved weights", report.result_row, str(directory))
    config = data.DataConfig(dataset="folder", data_dir=str(cifar_dir), image_size=16,
                             max_examples=6)
    one_line_error("layers without saved weights", training.evaluate, str(directory), config)


def test_bars_dir_with_a_stage_depth_edited_is_refused(tmp_path):
    genotype = bars_models.random_genotype(1, base_channels=(4, 8), max_depth=1).to_dict()
    genotype["stages"][0]["depth"] = 1
    directory = make_dir(tmp_path / "bars", {"family": "bars", "genotype": genotype})

    def shallower(spec):
        spec["genotype"]["stages"][0]["depth"] = 0
    edit_spec(directory, shallower)
    one_line_error(r"saved weights without a layer: stage0_cell1\b", mdir.load_model,
                   str(directory))
    one_line_error("saved weights without a layer", export.export, str(directory))


def test_the_other_run_refusal_names_what_differs_and_the_short_values():
    """One line naming each differing setting; a short value's recorded and given values
    are said (the refusal used to name only the setting), a dict, a long value or a
    missing key only by name; settings apart by semicolons (with commas a list of names
    read as if the values belonged to all of them)."""
    from bnas_tf import files
    saved = {"lr": 0.05, "ops": ["a", "b"], "net": {"cells": 8}, "gone": 1,
             "long": ["x" * 50], "cfg": {"a": 1}}
    current = {"lr": 0.3, "ops": ["a"], "net": {"cells": 5}, "long": ["y" * 50], "cfg": 3}
    with pytest.raises(files.OtherRunError) as e:
        files.refuse_other_run("D", saved, current)
    assert str(e.value) == ('D holds a different run (differs in cfg; gone; long; lr: 0.05 '
                            'recorded vs 0.3 given; net.cells: 8 recorded vs 5 given; ops: '
                            '["a", "b"] recorded vs ["a"] given); use another --output_dir '
                            'or delete it')
