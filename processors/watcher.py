"""The rules in force, reloaded when the file changes; a broken new file leaves the old rules in force.

No thread and no timer: the runtime asks :meth:`RulesWatcher.current` before each batch, which
looks at the file at most every ``interval`` seconds (one ``stat``), so a batch is always
checked against one complete rule set and none is dropped by a reload.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from thermoflow.logs import get_logger
from thermoflow.processors.thresholds import CompiledRules, compile_rules
from thermoflow.rules import RulesError, load_rules

log = get_logger(__name__)

_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class RulesWatcher:
    """Holds the compiled rules of ``path`` and reloads them when the file changes."""

    def __init__(
        self, path: Path, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Load the file now; raise :class:`RulesError` if it is not valid (fail fast at start)."""
        self.path = path
        self.interval = interval
        self._clock = clock
        self._stamp = _stamp(path)
        self._rules = compile_rules(load_rules(path))
        self._checked = clock()
        self.reloads = 0
        self.rejections = 0

    def current(self) -> CompiledRules:
        """The rules in force, after reloading the file if it changed since the last look."""
        now = self._clock()
        if now - self._checked >= self.interval:
            self._checked = now
            self.poll()
        return self._rules

    def poll(self) -> bool:
        """Look at the file now; returns whether new rules took effect."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        if stamp is not None and stamp[1] == 0:
            # An empty file is one being written (truncated, not yet filled): reading it would put
            # a rule set without rules in force. Look again at the next poll.
            return False
        self._stamp = stamp  # a broken file is reported once, not on every poll
        try:
            rules = compile_rules(load_rules(self.path))
        except RulesError as exc:
            self.rejections += 1
            log.error("rules_rejected", path=str(self.path), reason=str(exc), kept=self._rules.ruleset.source)
            return False
        self._rules = rules
        self.reloads += 1
        log.info("rules_reloaded", path=str(self.path), rules=list(rules.rule_ids))
        return True
