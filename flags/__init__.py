"""absl flag groups, each defined once and shared by every binary in tools/.

Also the few helpers every binary shares: defining a group's flags once,
checking the command line, and turning library errors into one-line usage errors.
"""
import contextlib
import re
import os
import shlex
import sys

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


# --- --help: this tool's own flags, grouped (tools call run(main, __doc__, groups)) ---
HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
HELP_WIDTH = 100


def names(module, exclude=()):
    """Names of the flags a flags/ module defines (its `_DEFINITIONS` rows), minus `exclude`."""
    return tuple(row[1] for row in module._DEFINITIONS if row[1] not in exclude)


def _default_text(flag):
    value = flag.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "empty"
    return str(value)


def _own_help(name, own):
    """The help a flag has in the first entry of `own` that gives it (a dict {flag name:
    help text}, or a flags/ module defining the flag), else the one absl holds (that of
    whichever module was imported first)."""
    for module in own:
        if isinstance(module, dict):
            if name in module:
                return module[name]
            continue
        for row in module._DEFINITIONS:
            if row[1] == name:
                return row[4]
    return absl_flags.FLAGS[name].help


def help_text(doc, groups, own=()):
    """The --help page: `doc`, then every flag of `groups` ((title, names) pairs) with its
    values, default and help, wrapped to HELP_WIDTH columns.

    A flag several groups define (identically, see `define`) shows the help of the first
    entry of `own` that gives it: without it, the help would be that of whichever module
    the process imported first. `own` holds, in order, the tool's own flags/ modules and
    dicts {flag name: help text}: a tool's own wording for a shared flag whose module help
    does not fit it (e.g. pipeline's --output_dir, which is neither search's nor train's
    directory). A text ending in "(default: X)" shows X as the flag's default when the
    flag's own default is unset or the text is the tool's own (a dict entry: the tool
    decides the default, e.g. evaluate's data is the model's training data).

    Raises KeyError naming a flag in `groups` that no imported flags/ module defines.
    """
    import textwrap

    lines = [(doc or "").strip(), "", "Flags of this tool (--helpfull adds absl's and "
             "TensorFlow's own):"]
    for title, flag_names in groups:
        lines += ["", f"{title}:"]
        for name in flag_names:
            if name not in absl_flags.FLAGS:
                raise KeyError(f"--{name} is listed in --help but not defined")
            flag = absl_flags.FLAGS[name]
            values = getattr(flag.parser, "enum_values", None)
            kind = f"<{'|'.join(values)}>" if values else flag.flag_type().replace(
                "comma separated list of strings", "a,b,...")
            text = _own_help(name, own)
            if values and text.startswith("<"):  # absl prefixes an enum's help with its values
                text = text.split(">: ", 1)[1]
            default = _default_text(flag)
            stated = re.search(r"\s*\(default: (.*)\)$", text, flags=re.S)
            tools_own = any(isinstance(entry, dict) and name in entry for entry in own)
            if stated and (flag.default is None or tools_own):  # a default the method or
                # the tool decides, stated in the help
                text, default = text[:stated.start()], stated.group(1)
                default = "unset" if default == "None" else default
            lines += textwrap.wrap(f"--{name}={kind}  (default: {default})", HELP_WIDTH,
                                   initial_indent="  ", subsequent_indent=" " * 8,
                                   break_on_hyphens=False)
            lines += textwrap.wrap(text, HELP_WIDTH, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6)
    return "\n".join(lines)


def saved_checkpoints(*roots):
    """What Ctrl-C leaves behind: "N epoch(s) in ROOT/.../ckpt" for every checkpoint folder
    under `roots` (search and training checkpoints are numbered by completed epochs), or
    "nothing saved yet"."""
    import tensorflow as tf

    found = []
    for root in roots:
        for folder, dirnames, _ in os.walk(root or ""):
            dirnames.sort()
            if os.path.basename(folder) == "ckpt":
                dirnames[:] = []
                latest = tf.train.latest_checkpoint(folder)
                if latest:
                    epochs = int(latest.rsplit("-", 1)[-1])
                    found.append(f"{epochs} epoch{'s' * (epochs != 1)} in {folder}")
    return "; ".join(found) or "nothing saved yet"


def interruptible(main, saved=None):
    """`main` with Ctrl-C turned into one line on stderr: what `saved()` says is on disk and
    the command that resumes (this one, rerun), then exit code 130 (128 + SIGINT)."""
    def wrapped(argv):
        try:
            return main(argv)
        except app.UsageError as e:  # one line, not absl's docstring before it
            print(f"{os.path.basename(sys.argv[0])}: {e} (--help lists its flags)",
                  file=sys.stderr, flush=True)
            sys.exit(1)
        except KeyboardInterrupt:
            command = shlex.join(sys.argv)
            if sys.argv[0].endswith(".py"):
                command = f"python {command}"
            line = f"interrupted: {saved()}. Resume with: {command}" if saved else \
                "interrupted (this tool resumes nothing: rerun it to start over)"
            print(f"\n{line}", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapped


def run(main, doc, groups, saved=None, own=()):
    """absl's app.run(main), with --help / -h / --helpshort printing
    `help_text(doc, groups, own)`
    and exiting 0 (absl's own --help prints only the docstring and exits 1), and Ctrl-C
    reported in one line (`interruptible(main, saved)`)."""
    def parse(argv):
        args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
        if any(arg in HELP_ARGS for arg in args):
            print(help_text(doc, groups, own))
            sys.exit(0)
        return app.parse_flags_with_usage(argv)

    app.run(interruptible(main, saved), flags_parser=parse)
