"""The argument parser every gaudi-exporter command uses: no flag prefixes, short errors with a suggestion.

argparse's defaults suit a tool with few flags; with 60 dotted ones they hurt: a prefix such as
``--pricing.static.usd 3`` is silently taken for ``--pricing.static.usd-per-hour``, and a typo prints the whole usage
(dozens of lines) above the one line that matters. Here a mistake gives the error, a "did you mean" when a flag is
close, and one line pointing at ``--help``; the exit status stays argparse's 2.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def flags(self) -> list[str]:
        """Every long option string this parser accepts."""
        return sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})

    def suggest(self, word: str) -> str | None:
        """The accepted flag closest to ``word`` (a prefix of exactly one flag counts as close)."""
        name = word.split("=", 1)[0]
        if not name.startswith("-"):
            return None
        flags = self.flags()
        starts = [f for f in flags if f.startswith(name)]
        if len(starts) == 1:
            return starts[0]
        close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
        return close[0] if close else None

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # Remembered for error(): a required flag reported missing may be one the user mistyped.
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        lines = [f"{self.prog}: error: {message}"]
        known = set(self.flags())
        shown: set[str] = set()
        for word in getattr(self, "_given", []):
            name = word.split("=", 1)[0]
            if not name.startswith("--") or name in known or name in shown:
                continue
            shown.add(name)
            hint = self.suggest(name)
            if hint:
                lines.append(f"  {name}: did you mean {hint}?")
        lines.append(f"Run '{self.prog} --help' for the list of flags.")
        self.exit(2, "\n".join(lines) + "\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)
