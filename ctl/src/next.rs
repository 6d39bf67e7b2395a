//! `gocronctl next`: what a rule will do, before it is put in `cron_job`.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use gocron_shared::rule::{RuleError, Schedule};

/// The first `count` fire instants of `rule` in `tz` strictly after `from`; fewer when the rule
/// stops firing (`@at`, a year field).
pub fn next_fires(
    rule: &str,
    tz: Tz,
    from: DateTime<Utc>,
    count: usize,
) -> Result<Vec<DateTime<Tz>>, RuleError> {
    let schedule = Schedule::new(rule, tz)?;
    let mut fires = Vec::with_capacity(count);
    let mut after = from;
    while fires.len() < count {
        let Some(next) = schedule.next_after(after) else {
            break;
        };
        fires.push(next.with_timezone(&tz));
        after = next;
    }
    Ok(fires)
}

/// An instant as `gocronctl next` prints it: RFC 3339 with the zone's offset, fractions only
/// when there are some (`2026-03-08T03:00:00-04:00`).
pub fn format(t: &DateTime<Tz>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// Parses `--tz`: an IANA zone name.
pub fn parse_tz(text: &str) -> Result<Tz, String> {
    text.parse().map_err(|_| {
        format!("unknown time zone {text:?} (expected an IANA name such as Europe/Berlin)")
    })
}

/// Parses `--from`: an RFC 3339 instant.
pub fn parse_from(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 instant like 2026-03-08T00:00:00Z ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_job_across_spring_forward() {
        let fires = next_fires(
            "30 2 * * *",
            parse_tz("America/New_York").unwrap(),
            parse_from("2026-03-07T00:00:00Z").unwrap(),
            3,
        )
        .unwrap();
        let printed: Vec<String> = fires.iter().map(format).collect();
        assert_eq!(
            printed,
            [
                "2026-03-07T02:30:00-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-09T02:30:00-04:00"
            ]
        );
    }
}
