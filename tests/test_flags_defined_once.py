"""Every flag is defined once: two flag groups may share a name only with the same
DEFINE function, default and bounds, and `flags.define` refuses a different second
definition instead of letting the first import silently win."""
import importlib
import pathlib
import pkgutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import flags  # noqa: E402

GROUPS = sorted(m.name for m in pkgutil.iter_modules([str(REPO / "flags")]))


def _rows():
    """(group, flag name, (DEFINE function, default, bounds)) of every group's flags."""
    rows = []
    for group in GROUPS:
        module = importlib.import_module(f"flags.{group}")
        for fn, name, default, kwargs, _ in getattr(module, "_DEFINITIONS", ()):
            rows.append((group, name, flags._signature(fn, default, kwargs)))
    return rows


def test_no_flag_name_is_defined_twice_differently():
    """(`--cells` had no bound in flags/search.py and lower_bound=2 in flags/model.py;
    `--conv_dtype` defaulted to None and to 'auto'.)"""
    seen, clashes = {}, []
    for group, name, signature in _rows():
        if name in seen and seen[name][1] != signature:
            clashes.append(f"--{name}: flags/{seen[name][0]}.py {seen[name][1]} vs "
                           f"flags/{group}.py {signature}")
        seen.setdefault(name, (group, signature))
    assert "plot" in GROUPS and len(seen) > 60
    assert not clashes, "\n".join(clashes)


def test_every_flag_group_imports_together():
    """All groups in one process (tools import several): no clash raises."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
            f"[importlib.import_module('flags.' + g) for g in {GROUPS!r}]; print('OK')")
    out = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_define_refuses_a_different_second_definition():
    from absl import flags as absl_flags
    row = (absl_flags.DEFINE_integer, "test_defined_once_probe", None, dict(lower_bound=1),
           "A probe.")
    flags.define([row])
    flags.define([row])  # the same definition again: skipped
    with pytest.raises(ValueError, match="--test_defined_once_probe is defined twice "
                                         "differently"):
        flags.define([(absl_flags.DEFINE_integer, "test_defined_once_probe", None,
                       dict(lower_bound=2), "A probe.")])
    with pytest.raises(ValueError, match="defined twice differently"):
        flags.define([(absl_flags.DEFINE_integer, "test_defined_once_probe", 3,
                       dict(lower_bound=1), "A probe.")])
