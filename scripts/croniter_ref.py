#!/usr/bin/env python3
"""scripts/croniter_ref.py — croniter as an independent reference for gocron's rule engine.

Reads lines `RULE<TAB>START` on stdin (a 5-field rule; START an RFC 3339 UTC instant such as
2026-03-01T10:00:00Z) and writes, for each, one line: the next COUNT (default 5) fire instants
strictly after START, in UTC (2026-03-01T10:05:00Z), separated by spaces; `NONE` if croniter finds
no next date; or `ERROR <message>` if croniter refuses the rule.

Day-of-month and day-of-week combine by cronie's rule, which croniter only has as an option:
when either field's text starts with `*` (or `?`) a day must match both (day_or=False), else
either (day_or=True). croniter on its own would OR a restricted field with `*/2`.

Used by the tests crate (tests/tests/e2e/rules.rs) through $GOCRON_TEST_PYTHON, a Python with
croniter installed (`scripts/services --test install` makes one under var/test/venv).

Usage: croniter_ref.py [COUNT] < rules.tsv
"""

import sys
from datetime import datetime, timezone

from croniter import CroniterBadDateError, croniter


def fires(rule, start, count):
    fields = rule.split()
    day_or = not (fields[2][0] in "*?" or fields[4][0] in "*?")
    it = croniter(rule, start, day_or=day_or)
    out = []
    for _ in range(count):
        try:
            t = it.get_next(datetime)
        except CroniterBadDateError:
            out.append("NONE")
            break
        out.append(t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return " ".join(out)


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        rule, start = line.split("\t")
        start = datetime.fromisoformat(start.replace("Z", "+00:00"))
        try:
            print(fires(rule, start, count))
        except Exception as e:  # the caller reports it with the rule
            print(f"ERROR {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
