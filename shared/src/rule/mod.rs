//! Cron rules (`cron_job.rule`) and their next fire instants in a time zone.
//!
//! # What a rule may be
//!
//! - 5 fields, crontab (Vixie/cronie): `minute hour day-of-month month day-of-week`.
//! - 6 fields: a leading seconds field, then those five. 7 fields: seconds first, year last
//!   (1970-2099).
//! - In every field: `*` (or `?`), lists `1,15`, ranges `1-5`, steps `*/10`, `10-40/10` and
//!   `5/15` (= `5-59/15`); month names `JAN-DEC` and weekday names `SUN-SAT`, any case, also in
//!   ranges. Day-of-week counts crontab's way: 0 and 7 are Sunday, 1 Monday ... 6 Saturday.
//! - Quartz extras, with crontab's weekday numbers (Quartz itself counts 1 = Sunday): in
//!   day-of-month `L` (last day), `L-3` (three days before it), `LW` (last Monday-Friday),
//!   `15W` (the Monday-Friday nearest to the 15th, never leaving the month); in day-of-week
//!   `5L` (the last Friday) and `5#3` (the third Friday).
//! - Macros `@yearly @annually @monthly @weekly @daily @midnight @hourly`; `@every <duration>`
//!   (`90s`, `1h30m`, `2d`; 1 s to 100 years) aligned to the Unix epoch, so every dispatcher
//!   computes the same instants and a restart never shifts them; `@at <RFC 3339 instant>`, a
//!   one-shot rule ([`Rule::is_one_shot`]); `@event <name>`, no instants at all: the job runs
//!   when an event of that name is inserted into `cron_event` ([`Rule::event`]).
//!
//! Day-of-month and day-of-week combine by cronie's rule: when either field's text starts with
//! `*` (or `?`), a day must match both; when neither does, a day matching *either* runs. So
//! `0 0 1,15 * MON` runs on the 1st, the 15th and every Monday, while `0 0 */2 * MON` runs on
//! odd-numbered Mondays only.
//!
//! # How the next instant is found
//!
//! A cron expression is a set of bitmasks (`expr.rs`): `u64` seconds and minutes, `u32` hours and
//! days, `u16` months, `u8` weekdays, with the Quartz extras and the year field kept out of line.
//! The search (`calendar.rs`) runs on the local wall clock and skips forward field by field: to
//! the next allowed year, month, then day (one bitmask per month combining both day fields),
//! hour, minute and second, each by `trailing_zeros`. It does not allocate.
//!
//! Local and UTC time are tied by the zone's offset table (`zone.rs`): the instants where the
//! offset changes, built once per zone from chrono-tz. Where the offset no longer changes (UTC,
//! fixed-offset zones, Asia/Shanghai since 1991) the search takes a shortcut: local = UTC +
//! offset.
//!
//! # Daylight saving time: cronie's rule
//!
//! A rule is *fixed-time* when neither its minute field nor its hour field starts with `*` (or
//! `?`): `30 2 * * *`, `0 9 * * MON-FRI`, `@daily`. The others (`*/5 * * * *`, `0 */2 * * *`,
//! `15 * * * *`, `@hourly`) are *wildcard* rules.
//!
//! - A wildcard rule runs by real elapsed time: it fires at every instant whose local time
//!   matches. Local times skipped when clocks go forward never happen, so nothing runs for them;
//!   local times repeated when clocks go back happen twice, so it runs in both passes.
//! - A fixed-time rule fires once per matching local time: at that time if it happens once; at
//!   its first occurrence if it happens twice (clocks went back); and, if it is skipped (clocks
//!   went forward), at the first instant after the gap, once however many of its times fell in
//!   the gap. Formally it fires, for each matching local time L, at the first instant at which
//!   the wall clock has reached L.
//!
//! Example, America/New_York: `30 2 * * *` runs at 03:00 EDT on 2026-03-08 (02:30 does not
//! exist that day) and once at 02:30 EST on 2026-11-01; `*/15 * * * *` runs at 01:45 EDT then
//! 03:00 EDT in March, and at 01:00, 01:15, ... 01:45 twice (EDT, then EST) in November.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;

mod calendar;
mod expr;
mod zone;

pub use expr::CronExpr;
use zone::Zone;

/// Occurs when a rule cannot be parsed; the message says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rule {rule:?}: {message}")]
pub struct RuleError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong with it.
    pub message: String,
}

/// A parsed rule, independent of time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// A cron expression: 5, 6 or 7 fields, or a macro standing for one.
    Cron(CronExpr),
    /// `@every`: a fixed period, aligned to the Unix epoch.
    Every(Duration),
    /// `@at`: a single instant (millisecond precision).
    At(DateTime<Utc>),
    /// `@event`: no instants; the job runs once for each event of this name.
    Event(String),
}

/// The longest event name.
pub const MAX_EVENT_NAME: usize = 255;

/// Checks an event name: 1 to [`MAX_EVENT_NAME`] characters, letters, digits and `. _ - : /`.
pub fn check_event_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("@event needs an event name, such as @event order.paid".into());
    }
    if name.chars().count() > MAX_EVENT_NAME {
        return Err(format!(
            "the event name is longer than {MAX_EVENT_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        return Err(format!(
            "the event name {name:?} holds {c:?} (allowed: letters, digits, . _ - : /)"
        ));
    }
    Ok(())
}

impl Rule {
    /// Parses a rule as users write it in `cron_job.rule`.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let err = |message: String| RuleError {
            rule: text.to_owned(),
            message,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(err("the rule is empty".into()));
        }
        if !trimmed.starts_with('@') {
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            return CronExpr::parse(trimmed, &fields)
                .map(Rule::Cron)
                .map_err(err);
        }
        let (name, arg) = trimmed
            .split_once(char::is_whitespace)
            .map_or((trimmed, ""), |(name, arg)| (name, arg.trim()));
        let name = name.to_ascii_lowercase();
        let expansion = match name.as_str() {
            "@every" => return parse_duration(arg).map(Rule::Every).map_err(err),
            "@at" => return parse_instant(arg).map(Rule::At).map_err(err),
            "@event" => {
                return check_event_name(arg)
                    .map(|()| Rule::Event(arg.to_owned()))
                    .map_err(err);
            }
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ => {
                return Err(err(format!(
                    "unknown macro {name:?} (known: @yearly @annually @monthly @weekly @daily @midnight @hourly @every @at @event)"
                )));
            }
        };
        if !arg.is_empty() {
            return Err(err(format!("{name} takes no argument, found {arg:?}")));
        }
        let fields: Vec<&str> = expansion.split(' ').collect();
        CronExpr::parse(trimmed, &fields)
            .map(Rule::Cron)
            .map_err(err)
    }

    /// Whether the rule fires at most once (`@at`): once that instant has passed,
    /// [`Schedule::next_after`] is `None` for good.
    pub fn is_one_shot(&self) -> bool {
        matches!(self, Rule::At(_))
    }

    /// The event an `@event` rule is subscribed to.
    pub fn event(&self) -> Option<&str> {
        match self {
            Rule::Event(name) => Some(name),
            _ => None,
        }
    }
}

/// A rule in a time zone: what a dispatcher keeps for each job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    rule: Rule,
    tz: Tz,
}

impl Schedule {
    /// Parses `rule` to be evaluated in `tz`.
    pub fn new(rule: &str, tz: Tz) -> Result<Schedule, RuleError> {
        Ok(Schedule {
            rule: Rule::parse(rule)?,
            tz,
        })
    }

    /// The first fire instant strictly after `after`, at millisecond precision; `None` when the
    /// rule never fires again (an `@at` instant or a year field in the past, a date that never
    /// comes such as `0 0 30 2 *`).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.rule {
            Rule::Every(period) => {
                let period_ms = period.as_millis() as i64;
                let k = after.timestamp_millis().div_euclid(period_ms) + 1;
                Utc.timestamp_millis_opt(k * period_ms).single()
            }
            Rule::At(at) => (*at > after).then_some(*at),
            Rule::Event(_) => None,
            Rule::Cron(expr) => {
                // Cron instants are whole seconds: the first candidate is the next second.
                let t0 = after.timestamp() + 1;
                let zone = Zone::of(self.tz);
                let secs = if let Some(offset) = zone.fixed_from(t0 - 1) {
                    expr.next_local(t0 + offset)? - offset
                } else if expr.is_fixed_time() {
                    next_fixed_time(expr, zone, t0)?
                } else {
                    next_elapsed_time(expr, zone, t0)?
                };
                DateTime::from_timestamp(secs, 0)
            }
        }
    }

    /// The time zone the rule is evaluated in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Whether the rule fires at most once: see [`Rule::is_one_shot`].
    pub fn is_one_shot(&self) -> bool {
        self.rule.is_one_shot()
    }
}

/// A fixed-time rule: for each matching local time L, the first instant at which the wall clock
/// has reached L. `t0` is the first candidate instant (Unix seconds).
fn next_fixed_time(expr: &CronExpr, zone: &Zone, t0: i64) -> Option<i64> {
    // Local times up to the clock's high-water mark before t0 have had their turn. That mark is
    // the clock at t0 - 1, unless the clocks went back and it has not caught up yet.
    let before = zone.span(zone.index_of(t0 - 1));
    let mut from = t0 + before.offset;
    if before.before > before.offset {
        from = from.max(before.start + before.before);
    }
    let local = expr.next_local(from)?;
    let mut index = zone.index_of(t0);
    loop {
        let span = zone.span(index);
        if local < span.start.saturating_add(span.offset) {
            // Skipped by a jump forward: the first instant after the gap.
            return Some(span.start);
        }
        if local < span.end.saturating_add(span.offset) {
            return Some(local - span.offset);
        }
        index += 1;
    }
}

/// A wildcard rule: the first instant from `t0` on whose local time matches.
fn next_elapsed_time(expr: &CronExpr, zone: &Zone, t0: i64) -> Option<i64> {
    let mut index = zone.index_of(t0);
    let mut start = t0;
    // The last search: (searched from, found). Reused while still valid, so that a rule firing
    // once a year does not search again in every span it crosses.
    let mut found: Option<(i64, i64)> = None;
    loop {
        let span = zone.span(index);
        let from = start + span.offset;
        let (searched, local) = match found {
            Some((searched, local)) if searched <= from && from <= local => (searched, local),
            _ => (from, expr.next_local(from)?),
        };
        if local < span.end.saturating_add(span.offset) {
            return Some(local - span.offset);
        }
        found = Some((searched, local));
        start = span.end;
        index += 1;
    }
}

/// Parses the instant of `@at`.
fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    let instant = DateTime::parse_from_rfc3339(text).map_err(|_| {
        format!("@at needs an RFC 3339 instant like 2026-05-01T09:00:00+02:00, not {text:?}")
    })?;
    Utc.timestamp_millis_opt(instant.timestamp_millis())
        .single()
        .ok_or_else(|| format!("@at instant {text:?} is out of range"))
}

/// The longest `@every` period: keeps millisecond arithmetic far from overflow.
const MAX_EVERY_SECS: u64 = 100 * 366 * 86_400;

/// Parses `1h30m`, `30s`, `2d`, `90m`: whole units of d, h, m, s, at least one second.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("@every needs a duration like 30s, 5m, 1h30m or 2d, not {text:?}");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    if total == 0 {
        return Err("@every needs a period of at least 1s".into());
    }
    if total > MAX_EVERY_SECS {
        return Err("@every is limited to 100 years".into());
    }
    Ok(Duration::from_secs(total))
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Rule::Every(d) => write!(f, "@every {}s in {}", d.as_secs(), self.tz),
            Rule::At(at) => write!(f, "@at {}", at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Rule::Event(name) => write!(f, "@event {name}"),
            Rule::Cron(expr) => write!(f, "{} in {}", expr.source(), self.tz),
        }
    }
}

#[cfg(test)]
mod tests;
