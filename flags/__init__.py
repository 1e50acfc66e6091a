"""absl flag groups, each defined once and shared by every binary in tools/.

Also the few helpers every binary shares: defining a group's flags once,
checking the command line, and turning library errors into one-line usage errors.
"""
import contextlib

import bnas_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from absl import app
from absl import flags as absl_flags


def define(definitions):
    """Define flags from (DEFINE_fn, name, default, kwargs, help) rows.

    A name already defined (by another group imported first) is skipped, so groups
    may share a flag and importing a group twice does not crash.
    """
    for define_fn, name, default, kwargs, help_text in definitions:
        if name not in absl_flags.FLAGS:
            define_fn(name, default, help=help_text, **kwargs)


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
