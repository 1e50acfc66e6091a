import os
import pathlib
import tempfile

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import pytest

# Tests (and the tools they run) never write the user's cost cache (bnas_tf.cost_cache).
os.environ.setdefault("BNAS_CACHE_DIR", tempfile.mkdtemp(prefix="bnas_cost_cache_"))

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_DIR = pathlib.Path(os.environ.get(
    "BNAS_CIFAR10_DIR", REPO.parent / "shared" / "datasets" / "cifar10" / "train"))


@pytest.fixture(scope="session")
def cifar_dir():
    if not CIFAR_DIR.is_dir():
        pytest.fail(f"CIFAR-10 folder not found at {CIFAR_DIR}; set BNAS_CIFAR10_DIR")
    return CIFAR_DIR
