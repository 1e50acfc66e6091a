"""The study's arms: how each gets a genotype and its final network spec (each arm's
``about`` says what it is; the report prints it).

Every BNAS-cell arm is built at ``final_cells`` cells; every arm but
``xnor-resnet18`` is then width-matched to the EqOPs of BNAS-A's cell at
``final_cells`` x ``final_channels`` (`matching`). A preset arm is refused with one
line when bnas_tf.models.presets lacks its preset.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from bnas_tf import fast_binary, genotypes, ops
from bnas_tf.models import presets
from bnas_tf.search import SearchConfig


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    kind: str                   # 'search' | 'random' | 'released' | 'preset'
    method: str | None = None   # 'bnas' | 'bars' (search space)
    search: tuple = ()          # SearchConfig overrides of the ablations
    preset: str | None = None
    matched: bool = True
    selection: str | None = None  # 'perturbation': ops picked on the trained supernet
    shares_search: str | None = None  # the arm whose finished search it may reuse
    about: str = ""             # one line for the report


_NO_POOL = tuple(o for o in ops.BNAS_OPS if "pool" not in o)
ARMS = {a.name: a for a in (
    Arm("bnas", "search", "bnas",
        about="BNAS search (runner.run_search) -> genotype derived from the alphas (Eq. 4)"),
    Arm("bnas-no-zeroise", "search", "bnas", (("derive", "darts"),),
        about="BNAS ablation (Table 5/6): Zeroise never picked when deriving"),
    Arm("bnas-no-skip", "search", "bnas", (("cell_template", "darts"),),
        about="BNAS ablation: no inter-cell skips, in the search and the final network"),
    Arm("bnas-no-div", "search", "bnas", (("diversity_lambda", 0.0),),
        about="BNAS ablation: no diversity regulariser"),
    Arm("bnas-warmup", "search", "bnas", (("warmup_epochs", "half"),),
        about="BNAS search whose first half trains the weights only (the warm-up of "
              "P-DARTS / PC-DARTS / BARS, against parameter-free ops winning early)"),
    Arm("bnas-pt", "search", "bnas", selection="perturbation", shares_search="bnas",
        about="the bnas arm's search (reused when finished for the seed), ops and inputs "
              "selected by perturbation on its trained supernet (DARTS-PT, Wang et al. "
              "2021) instead of by alpha magnitude"),
    Arm("bnas-no-pool", "search", "bnas", (("ops", _NO_POOL),),
        about="BNAS search over the space without its pooling ops (Zeroise and the "
              "binary convs)"),
    Arm("bnas-random", "random", "bnas",
        about="a genotype drawn uniformly from the BNAS space (ops incl. Zeroise, inputs)"),
    Arm("bnas-a", "released", "bnas", about="the released BNAS-A cell"),
    Arm("bars", "search", "bars", about="BARS search -> genotype sampled from its alphas"),
    Arm("bars-random", "random", "bars",
        about="a uniform BARS draw redrawn until it fits the study's FLOPs budget"),
    Arm("xnor-resnet18", "preset", preset="xnor-resnet18", matched=False,
        about="XNOR ResNet-18 at its own width (not matched)"),
    Arm("xnor-resnet18-matched", "preset", preset="xnor-resnet18",
        about="XNOR ResNet-18, width-scaled to the EqOPs target"),
    Arm("birealnet18-cifar", "preset", preset="birealnet18-cifar",
        about="Bi-Real Net-18 (CIFAR form), width-scaled to the EqOPs target"),
)}
# (arm, against): the report's paired comparisons, difference = arm - against per seed.
PAIRS = (("bnas", "bnas-random"), ("bars", "bars-random"), ("bnas", "bnas-a"),
         ("bnas", "xnor-resnet18-matched"), ("bnas", "birealnet18-cifar"),
         ("bars", "xnor-resnet18-matched"), ("bnas", "bnas-no-zeroise"),
         ("bnas", "bnas-no-skip"), ("bnas", "bnas-no-div"), ("bnas-warmup", "bnas-random"),
         ("bnas-warmup", "bnas"), ("bnas-pt", "bnas-random"), ("bnas-pt", "bnas"),
         ("bnas-no-pool", "bnas-random"), ("bnas-no-pool", "bnas"))
PERTURBATION_BATCHES = 4  # search_val batches scoring each removal (bnas-pt)
RANDOM_SALT = 7919  # random draws use seed * RANDOM_SALT + 1, not the search's seed


def get(name):
    return ARMS[name]


def check_available(names, train_conv_dtype="float32"):
    """ValueError (one line) for an arm whose preset this bnas_tf lacks, or whose
    network cannot train its binary convs in `train_conv_dtype` (a preset family
    without the bfloat16 variant, `fast_binary.WITHOUT_VARIANT`): refused before any
    trial runs, not when its training starts."""
    for name in names:
        arm = ARMS[name]
        if arm.preset and arm.preset not in presets.PRESETS:
            raise ValueError(f"arm {name} needs the preset {arm.preset!r}, which "
                             "bnas_tf.models.presets does not define in this version")
        family = presets.PRESETS[arm.preset]["family"] if arm.preset else None
        if train_conv_dtype == "bfloat16" and family in fast_binary.WITHOUT_VARIANT:
            raise ValueError(f"arm {name} cannot train with train_conv_dtype=bfloat16 (the "
                             f"cpu profile's default): its {family} blocks are Larq's "
                             "layers, without the speed variant; use "
                             "--train_conv_dtype=float32")


def search_config(arm, config, seed):
    """The SearchConfig of a search arm (also of bars-random: its budget and space)."""
    if arm.method == "bnas":
        return SearchConfig.create("bnas", epochs=config.search_epochs,
                                   batch_size=config.search_batch, cells=config.search_cells,
                                   channels=config.search_channels, seed=seed,
                                   strategy=config.strategy, a_lr=config.search_a_lr,
                                   **{"diversity_tau": config.search_diversity_tau,
                                      **_resolved(arm.search, config)}).validate()
    return SearchConfig.create("bars", epochs=config.search_epochs,
                               batch_size=config.search_batch, seed=seed,
                               strategy=config.strategy, a_lr=config.search_a_lr,
                               base_channels=tuple(config.bars_base_channels),
                               max_depth=config.bars_max_depth,
                               flops_budget=config.bars_flops_budget,
                               warmup_epochs=config.bars_warmup_epochs).validate()


def _resolved(search, config):
    """An arm's search overrides with "half" read as half the search epochs."""
    return {k: config.search_epochs // 2 if v == "half" else v for k, v in search}


def random_genotype(arm, config, seed, table):
    """A seeded uniform draw from the arm's search space (BARS: within the budget)."""
    rng = np.random.default_rng(seed * RANDOM_SALT + 1)
    if arm.method == "bnas":
        return genotypes.random_bnas(rng, SearchConfig.create("bnas").ops)
    search = search_config(arm, config, seed)
    budget = config.bars_flops_budget * 1e6

    def fits(genotype):
        return table.equivalent_ops(final_spec(arm, config, search, genotype)) <= budget

    return genotypes.random_bars(rng, ops.BARS_OPS, config.bars_base_channels,
                                 search.settings.width_choices,
                                 config.bars_max_depth, fits=fits)


def final_spec(arm, config, search, genotype):
    """The network spec of a trial before width matching."""
    if arm.kind == "preset":
        spec = presets.get(arm.preset)
        spec.setdefault("name", arm.preset)
        return spec
    from bnas_tf import pipeline
    if arm.method == "bnas":
        search = search or SearchConfig.create("bnas")
        spec = pipeline.derived_spec(search, genotype, cells=config.final_cells,
                                     channels=config.final_channels)
    else:
        spec = pipeline.derived_spec(search, genotype)
    spec["name"] = arm.name
    return spec


def target_spec(config):
    """BNAS-A's cell at final_cells x final_channels: its EqOPs are the study's target."""
    return final_spec(ARMS["bnas-a"], config, None, genotypes.BNAS_A)
