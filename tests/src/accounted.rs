//! The checker of "every tick accounted for" (issue 10), applied to a job's `cron_run` rows and
//! to what its command itself wrote.
//!
//! The job's command appends one line per run, `$GOCRON_SCHEDULED_AT $GOCRON_RUN_ID`
//! ([`command`] writes such a command). For every tick instant `t` of the job's rule in a window
//! `[from, to]`, [`violations`] requires:
//! - exactly one row with trigger `schedule` and `scheduled_at = t`, and it is final (not
//!   `dispatched` or `running`);
//! - a row saying the command ran (`succeeded`, `failed`, `timeout`, `killed`): exactly one
//!   line for `t`, naming that row's id;
//! - a row saying it did not run (`missed`, `no_executor`, `skipped`): no line for `t`;
//! - `lost` (the command may or may not have started): at most one line;
//! - no line for a tick without a row (a silent run), nor for an instant that is no tick.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use gocron_shared::entity::run;
use gocron_shared::rule::Schedule;

/// Statuses saying the command ran.
pub const RAN: &[&str] = &["succeeded", "failed", "timeout", "killed"];
/// Statuses saying the command did not run.
pub const NOT_RAN: &[&str] = &["missed", "no_executor", "skipped"];
/// Statuses of a run not yet over.
pub const NOT_FINAL: &[&str] = &["dispatched", "running"];

/// A shell command appending `$GOCRON_SCHEDULED_AT $GOCRON_RUN_ID` to `file`.
pub fn command(file: &Path) -> String {
    format!(
        "echo \"$GOCRON_SCHEDULED_AT $GOCRON_RUN_ID\" >> '{}'",
        file.display()
    )
}

/// The tick instants of `rule` (UTC) in `[from, to]`.
pub fn ticks(rule: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let schedule = Schedule::new(rule, chrono_tz::UTC).expect("a valid rule");
    let mut out = Vec::new();
    let mut t = schedule.next_after(from - chrono::Duration::milliseconds(1));
    while let Some(tick) = t.filter(|t| *t <= to) {
        out.push(tick);
        t = schedule.next_after(tick);
    }
    out
}

fn describe(r: &run::Model) -> String {
    let mut s = format!("run {} {}", r.id, r.status);
    if !r.executor.is_empty() {
        s.push_str(&format!(" on {}", r.executor));
    }
    if let Some(e) = r.error.as_deref().filter(|e| !e.is_empty()) {
        let e: String = e.chars().take(160).collect();
        s.push_str(&format!(" ({e})"));
    }
    s
}

/// Every way the job's ticks in `[from, to]` break the rule (see the module doc), one line per
/// tick (ticks in a row with the same problem share one line, giving their range and count), in
/// tick order; empty when every tick is accounted for. `runs` are the job's rows (any order,
/// manual ones are ignored), `lines` what its command wrote (lines outside the window are
/// ignored).
pub fn violations(
    rule: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    runs: &[run::Model],
    lines: &[String],
) -> Vec<String> {
    let ticks = ticks(rule, from, to);
    let mut out = Vec::new();
    let mut rows: BTreeMap<DateTime<Utc>, Vec<&run::Model>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.trigger == "schedule") {
        rows.entry(r.scheduled_at).or_default().push(r);
    }
    let mut written: BTreeMap<DateTime<Utc>, Vec<i64>> = BTreeMap::new();
    for line in lines {
        let parsed = line.split_once(' ').and_then(|(at, id)| {
            let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
            Some((at, id.trim().parse::<i64>().ok()?))
        });
        match parsed {
            Some((at, id)) if at >= from && at <= to => written.entry(at).or_default().push(id),
            Some(_) => {}
            None => out.push(format!("unreadable line written by the command: {line:?}")),
        }
    }
    for (at, ids) in &written {
        if ticks.binary_search(at).is_err() {
            out.push(format!(
                "{at}: the command wrote {} line(s) (runs {ids:?}) for an instant that is no tick",
                ids.len()
            ));
        }
    }
    let none = Vec::new();
    let mut problems: Vec<(DateTime<Utc>, String)> = Vec::new();
    for t in &ticks {
        let found = rows.get(t).unwrap_or(&none);
        let ids = written.get(t).map(Vec::as_slice).unwrap_or(&[]);
        let n = ids.len();
        let problem = match found.as_slice() {
            [] if n > 0 => Some(format!(
                "no row, but the command wrote {n} line(s) (runs {ids:?}): a silent run"
            )),
            [] => Some("no row at all: the tick vanished".to_owned()),
            [r] => {
                let status = r.status.as_str();
                if NOT_FINAL.contains(&status) {
                    Some(format!("{} is not final; {n} line(s)", describe(r)))
                } else if RAN.contains(&status) {
                    if n != 1 {
                        Some(format!("{} but the command wrote {n} line(s)", describe(r)))
                    } else if ids[0] != r.id {
                        Some(format!(
                            "{} but the command's line names run {}",
                            describe(r),
                            ids[0]
                        ))
                    } else {
                        None
                    }
                } else if NOT_RAN.contains(&status) {
                    (n > 0).then(|| {
                        format!(
                            "{} but the command ran: {n} line(s) (runs {ids:?})",
                            describe(r)
                        )
                    })
                } else if status == "lost" {
                    (n > 1).then(|| format!("{} but the command wrote {n} lines", describe(r)))
                } else {
                    Some(format!("{}: a status the rule does not know", describe(r)))
                }
            }
            many => Some(format!(
                "{} rows: {}; {n} line(s)",
                many.len(),
                many.iter()
                    .map(|r| describe(r))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        };
        if let Some(p) = problem {
            problems.push((*t, p));
        }
    }
    // Ticks in a row with the same problem (e.g. vanished) make one line: a range and a count.
    let mut i = 0;
    while i < problems.len() {
        let (first, p) = &problems[i];
        let mut j = i;
        while j + 1 < problems.len()
            && problems[j + 1].1 == *p
            && ticks.binary_search(&problems[j + 1].0)
                == ticks.binary_search(&problems[j].0).map(|k| k + 1)
        {
            j += 1;
        }
        if j == i {
            out.push(format!("{}: {p}", first.to_rfc3339()));
        } else {
            out.push(format!(
                "{} to {} ({} ticks): {p}",
                first.to_rfc3339(),
                problems[j].0.to_rfc3339(),
                j - i + 1
            ));
        }
        i = j + 1;
    }
    out
}

/// Panics, listing every violation of every job, unless each tick in `[from, to]` is accounted
/// for. `jobs`: (label, rule, runs, lines) per job.
pub fn assert_accounted(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    jobs: &[(String, &str, Vec<run::Model>, Vec<String>)],
) {
    let report = report(from, to, jobs);
    assert!(report.is_empty(), "{report}");
}

/// The text [`assert_accounted`] panics with; empty when every tick is accounted for.
pub fn report(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    jobs: &[(String, &str, Vec<run::Model>, Vec<String>)],
) -> String {
    let mut text = String::new();
    let mut total = 0;
    for (label, rule, runs, lines) in jobs {
        let v = violations(rule, from, to, runs, lines);
        if v.is_empty() {
            continue;
        }
        total += v.len();
        let n = ticks(rule, from, to).len();
        text.push_str(&format!(
            "\n{label} (rule {rule:?}, {n} ticks in the window):\n"
        ));
        for line in v {
            text.push_str(&format!("  {line}\n"));
        }
    }
    if total == 0 {
        return String::new();
    }
    format!(
        "ticks in [{}, {}] not accounted for ({total} findings):{text}",
        from.to_rfc3339(),
        to.to_rfc3339()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, at: DateTime<Utc>, status: &str) -> run::Model {
        run::Model {
            id,
            job_id: 1,
            scheduled_at: at,
            status: status.into(),
            executor: String::new(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            output: None,
            error: None,
            trigger: "schedule".into(),
            overrun_at: None,
            attempt: 1,
            retry_of: None,
            source_id: 0,
            shard_index: 0,
            shard_total: 0,
        }
    }

    #[test]
    fn every_way_of_breaking_the_rule_is_reported_at_once() {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let line = |s: i64, id: i64| format!("{} {id}", at(s).format("%Y-%m-%dT%H:%M:%S%.3fZ"));
        let runs = vec![
            row(1, at(0), "succeeded"),
            row(2, at(1), "succeeded"),
            row(3, at(2), "missed"),
            row(4, at(3), "running"),
            row(5, at(4), "lost"),
            row(6, at(5), "succeeded"),
            row(7, at(5), "succeeded"),
            row(9, at(8), "no_executor"),
        ];
        let lines = vec![
            line(0, 1),
            line(2, 3),
            line(4, 5),
            line(4, 5),
            line(7, 8),
            line(9, 10),
        ];
        let v = violations("* * * * * *", at(0), at(8), &runs, &lines);
        let gone = violations("* * * * * *", at(9), at(11), &[], &[]);
        assert_eq!(
            gone,
            [
                "2026-01-01T00:00:09+00:00 to 2026-01-01T00:00:11+00:00 (3 ticks): no row at all: \
              the tick vanished"
            ],
        );
        let expected = [
            "00:00:01+00:00: run 2 succeeded but the command wrote 0 line(s)",
            "00:00:02+00:00: run 3 missed but the command ran",
            "00:00:03+00:00: run 4 running is not final",
            "00:00:04+00:00: run 5 lost but the command wrote 2 lines",
            "00:00:05+00:00: 2 rows",
            "00:00:06+00:00: no row at all",
            "00:00:07+00:00: no row, but the command wrote 1 line(s) (runs [8]): a silent run",
        ];
        assert_eq!(v.len(), expected.len(), "{v:#?}");
        for (got, want) in v.iter().zip(expected) {
            assert!(got.contains(want), "{got:?} lacks {want:?}");
        }
        assert!(violations("* * * * * *", at(0), at(0), &runs, &lines).is_empty());
        assert!(violations("* * * * * *", at(8), at(8), &runs, &lines).is_empty());
    }
}
