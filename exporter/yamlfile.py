"""Reading a YAML file a user wrote (the config file, the web config): every failure is one line naming the file.

Without this, a file that is not UTF-8 raised UnicodeDecodeError and a deeply nested one RecursionError out of the
YAML composer, each a traceback and exit 1 instead of a message and exit 2.
"""

from __future__ import annotations

from pathlib import Path

import yaml

MAX_BYTES = 1 << 20  # a config file is a few KiB; a bigger one is a mistake (a binary, a log), not settings


class YamlFileError(ValueError):
    pass


def read(path: str | Path, what: str) -> object:
    """The parsed document of ``path`` (None for an empty file); YamlFileError("<what> <path>: ...") if unusable."""
    path = Path(path)
    where = f"{what} {path}"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise YamlFileError(f"{where}: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise YamlFileError(f"{where}: larger than {MAX_BYTES >> 20} MiB, not a settings file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise YamlFileError(f"{where}: not UTF-8 text (byte {e.start}, line {line})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise YamlFileError(f"{where}: not valid YAML: {e}") from None
    except RecursionError:
        raise YamlFileError(f"{where}: nested too deeply to be a settings file") from None
