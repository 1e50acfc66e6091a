"""absl flag groups, each defined once and shared by every binary in tools/.

Also the few helpers every binary shares: defining a group's flags once,
checking the command line, and turning library errors into one-line usage errors.
"""
import contextlib

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from absl import app
from absl import flags as absl_flags


_DEFINED = {}  # flag name -> (DEFINE function, default, kwargs) of its one definition


def _signature(define_fn, default, kwargs):
    return (getattr(define_fn, "__name__", str(define_fn)), repr(default),
            repr(sorted((k, list(v) if isinstance(v, (list, tuple)) else v)
                        for k, v in kwargs.items())))


def define(definitions):
    """Define flags from (DEFINE_fn, name, default, kwargs, help) rows.

    A flag is defined once: a group may repeat another group's flag only with the same
    DEFINE function, default and bounds (then the repeat is skipped); a different
    repeat raises ValueError naming the flag, instead of the first import silently
    winning.
    """
    for define_fn, name, default, kwargs, help_text in definitions:
        signature = _signature(define_fn, default, kwargs)
        if name in _DEFINED:
            if _DEFINED[name] != signature:
                raise ValueError(f"flag --{name} is defined twice differently: "
                                 f"{_DEFINED[name]} and {signature}")
            continue
        if name in absl_flags.FLAGS:
            raise ValueError(f"flag --{name} is already defined outside flags/")
        define_fn(name, default, help=help_text, **kwargs)
        _DEFINED[name] = signature


def check_args(argv, **required):
    """No stray positional arguments; every `name=HINT` in `required` flag given."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name, hint in required.items():
        if not absl_flags.FLAGS[name].value:
            raise app.UsageError(f"--{name}={hint} is required")


@contextlib.contextmanager
def usage_errors(*extra):
    """Report bad input (ValueError, FileNotFoundError, `extra`) as a one-line usage error."""
    try:
        yield
    except (ValueError, FileNotFoundError, *extra) as e:
        raise app.UsageError(str(e)) from None
