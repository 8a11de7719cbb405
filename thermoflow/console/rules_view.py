"""The rules in force, as the processors read them: the same file, the same parser, reloaded on change.

The console loads the rules file itself whenever its modification time changes (checked when a
page needs the rules), keeps the last good rule set, and remembers the last reload's outcome and
error: a file the processors refuse is refused here with the same message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from thermoflow.rules import RulesError, RuleSet, load_rules


@dataclass(frozen=True)
class Reload:
    at: float  # wall time of the reload
    ok: bool
    error: str | None
    rules: int  # rules in the file read (0 when refused)


class RulesView:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.rules: RuleSet | None = None  # the last good set: what the processors keep on a bad reload
        self.last: Reload | None = None
        self._mtime: float | None = None

    def current(self) -> RuleSet | None:
        """The rules in force, reloading the file first if it changed."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            if self._mtime != -1.0:
                self._mtime = -1.0
                self.last = Reload(time.time(), False, f"{self.path}: {exc.strerror}", 0)
            return self.rules
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                loaded = load_rules(self.path)
            except RulesError as exc:
                self.last = Reload(time.time(), False, str(exc), 0)
            else:
                self.rules = loaded
                self.last = Reload(time.time(), True, None, len(loaded.rules))
        return self.rules
