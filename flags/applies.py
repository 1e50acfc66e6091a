"""Every flag a tool accepts is applied or refused: the check each tool runs first.

A tool imports flag groups (flags/data.py, flags/model.py, ...) and so accepts
every flag they define, including flags only another tool uses (flags/train.py's
--model_dir is evaluate's; flags/size.py's --flops_budget is size's). `refuse_unused`
turns such a flag, when given on the command line, into a one-line usage error
naming it, so a run never exits 0 having ignored what the user asked for.
"""
from absl import app
from absl import flags as absl_flags

FLAGS = absl_flags.FLAGS


def names(*groups):
    """Names of the flags the flag-group modules `groups` define."""
    return {row[1] for group in groups for row in group._DEFINITIONS}


def given(name):
    return name in FLAGS and FLAGS[name].present


def refuse_unused(tool, groups, used, hints=None):
    """UsageError when a flag of `groups` that `tool` does not use (not in `used`) is
    given on the command line; `hints` maps a flag to what to use instead."""
    unused = sorted(n for n in names(*groups) - set(used) if given(n))
    if unused:
        hints = hints or {}
        hint = "; ".join(hints[n] for n in unused if n in hints)
        raise app.UsageError(
            f"{tool} does not use {', '.join('--' + n for n in unused)}"
            + (f": {hint}" if hint else "; drop it" if len(unused) == 1 else "; drop them"))


def refuse_without(condition, names_, reason):
    """UsageError when any flag in `names_` is given although `condition` is false."""
    if not condition:
        bad = [n for n in names_ if given(n)]
        if bad:
            raise app.UsageError(f"{', '.join('--' + n for n in bad)}: {reason}")
