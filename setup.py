"""bnas-tf: search, train and deploy binary neural network architectures (BNAS, BARS)."""
from setuptools import find_packages, setup

# tools/benchmark.py runs from a checkout: its harness (benchmarks/) is not installed
TOOLS = ["search", "train", "evaluate", "export", "report", "size", "compare",
         "plot_genotype", "pipeline", "study"]

setup(
    name="bnas-tf",
    version="0.1.0",
    description="Binary neural architecture search (BNAS, BARS) on TensorFlow, Keras and Larq",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["bnas_tf", "bnas_tf.*", "flags", "tools"]),
    package_data={"bnas_tf": ["preset_costs.json"]},  # bnas_tf.cost_cache's snapshot
    install_requires=[
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "larq==0.14.0",
        "larq-compute-engine==0.16.0",
        "tensorflow-datasets==4.9.10",
        "importlib_resources",  # TFDS 4.9.10 imports it to prepare imagenet2012 (manual_dir)
        "keras-tuner==1.4.8",
        "scikit-learn>=1.3",  # keras-tuner's Bayesian oracle (tools/size.py --oracle=bayesian)
        "absl-py>=2.1",
        "tensorboard==2.21.0",
        "matplotlib>=3.8",
        "scipy>=1.10",  # the study's paired t-test (bnas_tf/study/report.py)
        "tqdm>=4.66",
        "pillow>=10",
    ],
    extras_require={"test": ["pytest>=8"]},
    entry_points={"console_scripts": [
        f"bnas-{name.replace('_', '-')}=tools.{name}:run" for name in TOOLS]},
)
