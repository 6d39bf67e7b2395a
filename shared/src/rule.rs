//! Cron rules (`cron_job.rule`) and their next fire instants in a time zone.
//!
//! Accepted: 5-field crontab (`*/5 * * * *`), 6 fields with a leading seconds field
//! (`*/2 * * * * *`), 7 fields (seconds first, year last), the macros `@yearly @annually
//! @monthly @weekly @daily @midnight @hourly`, and `@every <duration>` (`30s`, `1h30m`, `2d`).
//!
//! Field matching is done by the `cron` crate. Its numeric day-of-week counts 1 = Sunday, unlike
//! crontab's 0 = Sunday; rather than let a pasted rule silently mean another day, numbers in the
//! day-of-week field are refused until crontab-exact semantics land: use names (`MON-FRI`).
//!
//! `@every` ticks are aligned to the Unix epoch (`@every 1h` fires on the hour, UTC), so every
//! dispatcher computes the same instants and a restart never shifts them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

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
#[derive(Debug, Clone)]
pub enum Rule {
    /// A cron expression (normalised to the `cron` crate's 6/7-field form).
    Cron(Box<cron::Schedule>),
    /// A fixed period, aligned to the Unix epoch.
    Every(Duration),
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
        if let Some(rest) = trimmed.strip_prefix("@every") {
            let period = parse_duration(rest.trim()).map_err(err)?;
            return Ok(Rule::Every(period));
        }
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *".to_owned(),
            "@monthly" => "0 0 0 1 * *".to_owned(),
            "@weekly" => "0 0 0 * * SUN".to_owned(),
            "@daily" | "@midnight" => "0 0 0 * * *".to_owned(),
            "@hourly" => "0 0 * * * *".to_owned(),
            m if m.starts_with('@') => {
                return Err(err(format!(
                    "unknown macro {trimmed:?} (known: @yearly @annually @monthly @weekly @daily @midnight @hourly @every)"
                )));
            }
            _ => {
                let fields: Vec<&str> = trimmed.split_whitespace().collect();
                let with_seconds = match fields.len() {
                    5 => format!("0 {}", fields.join(" ")),
                    6 | 7 => fields.join(" "),
                    n => {
                        return Err(err(format!(
                            "{n} fields; expected 5 (min hour day month weekday), 6 (seconds first) or 7 (seconds first, year last)"
                        )));
                    }
                };
                let weekday = if fields.len() == 5 {
                    fields[4]
                } else {
                    fields[5]
                };
                if weekday.chars().any(|c| c.is_ascii_digit()) {
                    return Err(err(format!(
                        "day-of-week field {weekday:?}: write weekdays by name (SUN-SAT); numeric weekdays are not supported yet"
                    )));
                }
                with_seconds
            }
        };
        let schedule = cron::Schedule::from_str(&expanded).map_err(|e| err(e.to_string()))?;
        Ok(Rule::Cron(Box::new(schedule)))
    }
}

/// A rule in a time zone: what a dispatcher keeps for each job.
#[derive(Debug, Clone)]
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
    /// rule never fires again (a year field in the past).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.rule {
            Rule::Every(period) => {
                let period_ms = period.as_millis() as i64;
                let k = after.timestamp_millis().div_euclid(period_ms) + 1;
                Utc.timestamp_millis_opt(k * period_ms).single()
            }
            Rule::Cron(schedule) => schedule
                .after(&after.with_timezone(&self.tz))
                .next()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// The time zone the rule is evaluated in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }
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
            Rule::Cron(s) => write!(f, "{} in {}", s.source(), self.tz),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(rule: &str, tz: Tz, from: &str) -> String {
        Schedule::new(rule, tz)
            .unwrap()
            .next_after(at(from))
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    #[test]
    fn five_fields_fire_on_the_minute() {
        assert_eq!(
            next("*/5 * * * *", Tz::UTC, "2026-01-01T10:02:30Z"),
            "2026-01-01T10:05:00.000Z"
        );
        assert_eq!(
            next("*/5 * * * *", Tz::UTC, "2026-01-01T10:05:00Z"),
            "2026-01-01T10:10:00.000Z"
        );
    }

    #[test]
    fn six_fields_have_seconds_and_ignore_sub_second_offsets() {
        assert_eq!(
            next("*/2 * * * * *", Tz::UTC, "2026-01-01T10:00:00.500Z"),
            "2026-01-01T10:00:02.000Z"
        );
        assert_eq!(
            next("* * * * * *", Tz::UTC, "2026-01-01T10:00:00.999Z"),
            "2026-01-01T10:00:01.000Z"
        );
    }

    #[test]
    fn macros() {
        let from = "2026-03-14T15:09:26Z";
        assert_eq!(next("@hourly", Tz::UTC, from), "2026-03-14T16:00:00.000Z");
        assert_eq!(next("@daily", Tz::UTC, from), "2026-03-15T00:00:00.000Z");
        assert_eq!(next("@midnight", Tz::UTC, from), "2026-03-15T00:00:00.000Z");
        // 2026-03-15 is a Sunday.
        assert_eq!(next("@weekly", Tz::UTC, from), "2026-03-15T00:00:00.000Z");
        assert_eq!(next("@monthly", Tz::UTC, from), "2026-04-01T00:00:00.000Z");
        assert_eq!(next("@yearly", Tz::UTC, from), "2027-01-01T00:00:00.000Z");
        assert_eq!(next("@annually", Tz::UTC, from), "2027-01-01T00:00:00.000Z");
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        assert_eq!(
            next("@every 30s", Tz::UTC, "2026-01-01T10:00:10.250Z"),
            "2026-01-01T10:00:30.000Z"
        );
        assert_eq!(
            next("@every 1h30m", Tz::UTC, "2026-01-01T10:00:00Z"),
            "2026-01-01T10:30:00.000Z"
        );
        assert_eq!(
            next("@every 1h30m", Tz::UTC, "2026-01-01T10:30:00Z"),
            "2026-01-01T12:00:00.000Z"
        );
    }

    #[test]
    fn time_zone_shifts_local_rules() {
        // 09:00 in Shanghai (UTC+8) is 01:00 UTC.
        assert_eq!(
            next(
                "0 9 * * *",
                "Asia/Shanghai".parse().unwrap(),
                "2026-06-01T00:00:00Z"
            ),
            "2026-06-01T01:00:00.000Z"
        );
    }

    #[test]
    fn weekday_names_work_and_numbers_are_refused() {
        // 2026-03-14 is a Saturday; the next Monday 09:00 is the 16th.
        assert_eq!(
            next("0 9 * * MON-FRI", Tz::UTC, "2026-03-14T00:00:00Z"),
            "2026-03-16T09:00:00.000Z"
        );
        let err = Rule::parse("0 9 * * 1-5").unwrap_err();
        assert!(err.message.contains("day-of-week"), "{err}");
    }

    #[test]
    fn invalid_rules_say_why() {
        for (rule, needle) in [
            ("", "empty"),
            ("* * *", "3 fields"),
            ("61 * * * *", ""),
            ("@often", "unknown macro"),
            ("@every", "duration"),
            ("@every 0s", "at least 1s"),
            ("@every 5x", "duration"),
            ("@every 5", "duration"),
            ("@every 2305843009213693952s", "100 years"),
            ("@every 99999999999999999999999s", "duration"),
        ] {
            let err = Rule::parse(rule).unwrap_err();
            assert!(err.to_string().contains(needle), "{rule}: {err}");
            assert_eq!(err.rule, rule);
        }
    }
}
