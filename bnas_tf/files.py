"""Atomic file writes: a failed or interrupted write never leaves a truncated file or
clobbers the previous one (checkpoints, genotypes, metrics, .tflite files); and the
guard of every run directory (`refuse_other_run`)."""
from __future__ import annotations

import json
import os
import tempfile


def write_atomic(path, data):
    """Write `data` (bytes or str) to `path` via a temporary file in the same folder."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ValueError(f"output {path} is a directory; give a file path")
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp makes it private; open() would not
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def jsonable(value):
    """`json.dump`'s default: numpy scalars and arrays, tuples."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plain(value):
    """`value` with plain JSON types only (numpy scalars and arrays, tuples and
    non-string keys converted as `write_json` writes them)."""
    return json.loads(json.dumps(value, default=jsonable))


def write_json(path, data, sort_keys=False):
    """Write `data` as indented JSON, atomically (the JSON is built before any write)."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys, default=jsonable) + "\n"
    write_atomic(path, text)
    return path


def differences(saved, current, prefix=""):
    """Dotted names of the entries that differ between two (nested) dicts, compared as
    plain JSON; a key only one side has counts as a difference."""
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return [] if plain(saved) == plain(current) else [prefix.rstrip(".") or "config"]
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        if key not in saved or key not in current:
            out.append(f"{prefix}{key}")
        else:
            out.extend(differences(saved[key], current[key], f"{prefix}{key}."))
    return out


class OtherRunError(ValueError):
    """A run's directory belongs to another run (different recorded settings)."""


def refuse_other_run(directory, saved, current, what="run",
                     mend="use another --output_dir or delete it", error=OtherRunError):
    """The one guard of every run directory (search, training, sizing): raise
    `error` (an OtherRunError), one line naming the differing settings, when `saved` (what the
    directory records) differs from `current` (this run's settings)."""
    diffs = differences(saved, current)
    if diffs:
        named = [_difference(name, saved, current) for name in diffs[:6]]
        raise error(f"{directory} holds a different {what} (differs in "
                    f"{'; '.join(named)}); {mend}")


def _difference(dotted, saved, current):
    """'name: A recorded vs B given' for a short value (a scalar or a list) on both
    sides, else 'name'."""
    values = []
    for side in (saved, current):
        for key in dotted.split(".") if dotted != "config" else ():
            side = side.get(key) if isinstance(side, dict) else None
        text = json.dumps(plain(side))
        if side is None or isinstance(side, dict) or len(text) > 40:
            return dotted
        values.append(text.strip('"'))
    return f"{dotted}: {values[0]} recorded vs {values[1]} given"
