import os
import pathlib

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_DIR = pathlib.Path(os.environ.get(
    "BNAS_CIFAR10_DIR", REPO.parent / "shared" / "datasets" / "cifar10" / "train"))


@pytest.fixture(scope="session")
def cifar_dir():
    if not CIFAR_DIR.is_dir():
        pytest.fail(f"CIFAR-10 folder not found at {CIFAR_DIR}; set BNAS_CIFAR10_DIR")
    return CIFAR_DIR
