//! Alarm delivery: what the monitor's checks send, and how.
//!
//! The monitor decides *when* an alarm is due (its checks, the alarm table, dedup, quiet period,
//! cap); this module knows *what* an alarm says and *how* it reaches a human, so that any daemon
//! or tool could send one.
//!
//! Modules:
//! - [`config`]: the `[alarm]` section (SMTP, SMS gateway, quiet period, daily cap, timing).
//! - [`message`]: the facts of an alarm and their mail subject, mail body and SMS text.
//! - [`mail`]: mail through SMTP (lettre): none, STARTTLS or implicit TLS, optional login.
//! - [`sms`]: SMS through any HTTP gateway, from a URL, a method and a body template.

pub mod config;
pub mod mail;
pub mod message;
pub mod sms;

use std::fmt;
use std::str::FromStr;

/// What an alarm is about (`cron_alarm.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlarmKind {
    /// A run ended `failed`, `timeout`, `lost`, `no_executor` or `skipped`.
    RunFailed,
    /// A run is still `running` past its timeout (or flagged overrun), or `dispatched` and
    /// never started.
    RunOverdue,
    /// A job's tick passed without a run (or a run row says `missed`).
    TickMissed,
    /// A machine group targeted by enabled jobs has no live executor.
    GroupDown,
    /// No dispatcher is registered in etcd.
    NoDispatcher,
    /// A job row is invalid (`cron_job.last_error` is set).
    JobInvalid,
    /// The first success of a job after a `run_failed` alarm.
    Recovered,
    /// How many alarms of one kind and job the quiet period held back.
    HeldSummary,
    /// The conditions found at a monitor's start after downtime, in one message.
    StartSummary,
}

impl AlarmKind {
    /// Every kind, in a stable order.
    pub const ALL: [AlarmKind; 9] = [
        AlarmKind::RunFailed,
        AlarmKind::RunOverdue,
        AlarmKind::TickMissed,
        AlarmKind::GroupDown,
        AlarmKind::NoDispatcher,
        AlarmKind::JobInvalid,
        AlarmKind::Recovered,
        AlarmKind::HeldSummary,
        AlarmKind::StartSummary,
    ];

    /// The spelling stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::RunFailed => "run_failed",
            AlarmKind::RunOverdue => "run_overdue",
            AlarmKind::TickMissed => "tick_missed",
            AlarmKind::GroupDown => "group_down",
            AlarmKind::NoDispatcher => "no_dispatcher",
            AlarmKind::JobInvalid => "job_invalid",
            AlarmKind::Recovered => "recovered",
            AlarmKind::HeldSummary => "held_summary",
            AlarmKind::StartSummary => "start_summary",
        }
    }

    /// Whether the quiet period applies: summaries are themselves the answer to a flood.
    pub fn is_quieted(self) -> bool {
        !matches!(self, AlarmKind::HeldSummary | AlarmKind::StartSummary)
    }
}

impl FromStr for AlarmKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AlarmKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown alarm kind {s:?}"))
    }
}

impl fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an alarm is delivered (`cron_alarm.channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// SMTP.
    Mail,
    /// The HTTP SMS gateway.
    Sms,
}

impl Channel {
    /// The spelling stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Mail => "mail",
            Channel::Sms => "sms",
        }
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mail" => Ok(Channel::Mail),
            "sms" => Ok(Channel::Sms),
            _ => Err(format!("unknown alarm channel {s:?}")),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Occurs when an alarm could not be delivered; the caller retries later with backoff.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// Occurs when the configuration or an address cannot be used: retrying will not help
    /// until the configuration or the job row is fixed, but it is retried all the same, since
    /// a fixed row or restarted daemon should still get the alarm out.
    #[error("cannot build the message: {0}")]
    Message(String),
    /// Occurs when the SMTP server or the SMS gateway cannot be reached or refuses.
    #[error("{0}")]
    Transport(String),
}

/// Splits a recipient list (`a@x, b@y c@z`) on commas and whitespace, without duplicates.
pub fn split_list(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in text.split(|c: char| c == ',' || c == ';' || c.is_whitespace()) {
        let item = item.trim();
        if !item.is_empty() && !out.iter().any(|o| o == item) {
            out.push(item.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas_and_spaces() {
        assert_eq!(
            split_list(" a@x, b@y  c@z,,a@x "),
            vec!["a@x", "b@y", "c@z"]
        );
        assert!(split_list("  ").is_empty());
    }

    #[test]
    fn kinds_round_trip() {
        for k in AlarmKind::ALL {
            assert_eq!(k.as_str().parse::<AlarmKind>().unwrap(), k);
        }
    }
}
