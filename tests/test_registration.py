"""`import bnas_tf` registers every custom Keras object: a model saved whole loads in a
fresh process after that import alone (issue 14, item 6)."""
import pathlib
import subprocess
import sys

import bnas_tf  # noqa: F401
import numpy as np
import tensorflow as tf

from bnas_tf import models, recipes, training
from bnas_tf.models import bars as bars_models
from bnas_tf.models import presets

REPO = pathlib.Path(__file__).resolve().parents[1]

LOAD = """
import sys
import numpy as np
import bnas_tf
import tensorflow as tf
for path in sys.argv[1:]:
    model = tf.keras.models.load_model(path)
    x = np.load(path + ".x.npy")
    np.save(path + ".out.npy", model.predict(x, verbose=0))
print("LOADED")
"""


def test_models_saved_whole_load_after_import_bnas_tf_only(tmp_path):
    specs = {
        "bnas": presets.resolve(genotype="bnas_a", cells=3, channels=4),
        "bars": {"family": "bars", "genotype": bars_models.random_genotype(
            1, base_channels=(4, 8), max_depth=1).to_dict()},
    }
    config = recipes.recipe("cifar", epochs=1, batch_size=2)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    paths, expected = [], []
    for name, spec in specs.items():
        model = models.build(spec, 3, 16, auxiliary=False)
        # compiled with the project's loss and one-cycle schedule: both must load too
        training.compile_model(model, config, recipes.make_optimizer(config, 4))
        path = str(tmp_path / f"{name}.h5")
        model.save(path)
        np.save(path + ".x.npy", x)
        paths.append(path)
        expected.append(model.predict(x, verbose=0))
    proc = subprocess.run([sys.executable, "-c", LOAD, *paths], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert "LOADED" in proc.stdout, proc.stderr[-2000:]
    for path, want in zip(paths, expected):
        np.testing.assert_allclose(np.load(path + ".out.npy"), want, rtol=1e-5, atol=1e-5)
