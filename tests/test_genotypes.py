"""Genotypes: JSON round trip, released genotypes, and every bad input."""
import json

import pytest

from bnas_tf import genotypes
from bnas_tf.genotypes import GenotypeError


def test_released_names_load():
    a = genotypes.load("bnas_a")
    assert a.normal[1] == ("bin_dil_conv_3x3", 0) and a.reduce[0] == ("max_pool_3x3", 0)
    assert genotypes.load("BNAS-F") is genotypes.BNAS_IMAGENET


@pytest.mark.parametrize("geno", [genotypes.BNAS_A, genotypes.BNAS_IMAGENET])
def test_json_round_trip(tmp_path, geno):
    path = genotypes.save(geno, str(tmp_path / "g.json"))
    assert genotypes.load(path) == geno
    assert genotypes.load(json.dumps(geno.to_dict())) == geno


def test_bars_round_trip(tmp_path):
    cell = ["bin_conv_3x3", "shortcut", "none"] * 3 + ["none"]
    geno = genotypes.BarsGenotype(
        stages=[genotypes.BarsStage(0.5, 1, cell), genotypes.BarsStage(1.0, 3, cell),
                genotypes.BarsStage(0.25, 0, cell)], reduce_cell=cell)
    loaded = genotypes.load(genotypes.save(geno, str(tmp_path / "bars.json")))
    assert loaded == geno and loaded.stages[1].depth == 3


def _bad(**changes):
    data = genotypes.BNAS_A.to_dict()
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize("text, message", [
    (_bad(normal=[["conv_7x7", 0]] + genotypes.BNAS_A.to_dict()["normal"][1:]),
     "unknown op 'conv_7x7'"),
    (_bad(normal=genotypes.BNAS_A.to_dict()["normal"][:6]), "needs 8 .* got 6"),
    (_bad(reduce=[["none", 2]] + genotypes.BNAS_A.to_dict()["reduce"][1:]),
     "node 2 cannot take input 2"),
    (_bad(normal_concat=[1, 2]), "normal_concat"),
    (_bad(template="resnet"), "unknown cell template"),
    (_bad(method="enas"), "unknown genotype method"),
    (_bad(normal=[["none"]] * 8), "not an \\[op name, input index\\] pair"),
    ('{"normal": [', "malformed genotype JSON"),
    ('{"method": "bnas"}', "lacks normal, reduce"),
])
def test_bad_genotypes_raise_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(GenotypeError, match=message) as info:
        genotypes.load(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_unknown_name_or_missing_file():
    with pytest.raises(GenotypeError, match="neither a released name"):
        genotypes.load("no/such/genotype.json")


def test_bars_validation():
    cell = ["none"] * 10
    with pytest.raises(GenotypeError, match="depth must be in 0..3"):
        genotypes.BarsGenotype(stages=[genotypes.BarsStage(1.0, 4, cell)] * 3, reduce_cell=cell)
    with pytest.raises(GenotypeError, match="needs 10 edge ops"):
        genotypes.BarsGenotype(stages=[genotypes.BarsStage(1.0, 1, cell[:9])] * 3,
                               reduce_cell=cell)


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / "g.json")
    genotypes.save(genotypes.BNAS_A, path)
    before = open(path).read()

    class Broken:
        def to_dict(self):
            return {"method": "bnas", "bad": object()}
    with pytest.raises(TypeError):
        genotypes.save(Broken(), path)
    assert open(path).read() == before
