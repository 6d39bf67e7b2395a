//! What an alarm says: its facts, rendered as a mail subject and body, and as a short SMS text.
//!
//! The facts are captured when the condition is found and rendered at once into the alarm row,
//! so that what is sent later (after a retry, by another monitor) is what was true then.

use chrono::{DateTime, SecondsFormat, Utc};

use super::AlarmKind;
use crate::entity::{job, run};

/// The most output lines, and bytes, an alarm mail quotes from a run.
const OUTPUT_LINES: usize = 20;
const OUTPUT_BYTES: usize = 2048;
/// The longest SMS text.
const SMS_CHARS: usize = 160;

/// Everything a human needs to act on one alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmFacts {
    /// What happened.
    pub kind: AlarmKind,
    /// The job it is about, if any.
    pub job: Option<JobFacts>,
    /// The run it is about, if any.
    pub run: Option<RunFacts>,
    /// The machine concerned: the run's executor, else the monitor's host.
    pub host: String,
    /// What is wrong, in words (one line, or a list for summaries).
    pub detail: String,
    /// When the monitor found it.
    pub found_at: DateTime<Utc>,
}

/// The job's side of an alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    /// `cron_job.id`.
    pub id: i64,
    /// `cron_job.name`.
    pub name: String,
    /// `cron_job.rule`.
    pub rule: String,
    /// `cron_job.command`.
    pub command: String,
}

impl From<&job::Model> for JobFacts {
    fn from(row: &job::Model) -> JobFacts {
        JobFacts {
            id: row.id,
            name: row.name.clone(),
            rule: row.rule.clone(),
            command: row.command.clone(),
        }
    }
}

/// The run's side of an alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFacts {
    /// `cron_run.id`.
    pub id: i64,
    /// `cron_run.executor` (`name@address`), empty if none.
    pub executor: String,
    /// The tick.
    pub scheduled_at: DateTime<Utc>,
    /// When the command started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the run ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// `cron_run.status`.
    pub status: String,
    /// Exit code or HTTP status.
    pub exit_code: Option<i32>,
    /// `cron_run.error`.
    pub error: Option<String>,
    /// The tail of the output (already cut to what a mail quotes).
    pub output_tail: String,
}

impl From<&run::Model> for RunFacts {
    fn from(row: &run::Model) -> RunFacts {
        RunFacts {
            id: row.id,
            executor: row.executor.clone(),
            scheduled_at: row.scheduled_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            status: row.status.clone(),
            exit_code: row.exit_code,
            error: row.error.clone(),
            output_tail: tail(row.output.as_deref().unwrap_or("")),
        }
    }
}

/// The last 20 lines (at most 2 KiB) of `output`.
pub fn tail(output: &str) -> String {
    let mut start = output.len().saturating_sub(OUTPUT_BYTES);
    while !output.is_char_boundary(start) {
        start += 1;
    }
    let cut = &output[start..];
    let lines: Vec<&str> = cut.lines().collect();
    let keep = &lines[lines.len().saturating_sub(OUTPUT_LINES)..];
    keep.join("\n")
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), time)
}

impl AlarmFacts {
    /// The mail subject: the kind, the job and the host.
    pub fn subject(&self) -> String {
        let about = match &self.job {
            Some(job) => format!(" job {} \"{}\"", job.id, job.name),
            None => String::new(),
        };
        format!("[gocron] {}:{about} on {}", self.kind, self.host)
    }

    /// The mail body: every fact, one per line, the output's tail, and a link if `base_url`.
    pub fn mail_body(&self, base_url: &str) -> String {
        let mut b = String::new();
        b.push_str(&format!("alarm:        {}\n", self.kind));
        b.push_str(&format!("found at:     {}\n", time(self.found_at)));
        b.push_str(&format!("host:         {}\n", self.host));
        if let Some(job) = &self.job {
            b.push_str(&format!("job id:       {}\n", job.id));
            b.push_str(&format!("job name:     {}\n", job.name));
            b.push_str(&format!("rule:         {}\n", job.rule));
            b.push_str(&format!("command:      {}\n", job.command));
        }
        if let Some(run) = &self.run {
            b.push_str(&format!("run id:       {}\n", run.id));
            let executor = if run.executor.is_empty() {
                "-"
            } else {
                &run.executor
            };
            b.push_str(&format!("executor:     {executor}\n"));
            b.push_str(&format!("scheduled at: {}\n", time(run.scheduled_at)));
            b.push_str(&format!("started at:   {}\n", opt_time(run.started_at)));
            b.push_str(&format!("finished at:  {}\n", opt_time(run.finished_at)));
            b.push_str(&format!("status:       {}\n", run.status));
            let code = run
                .exit_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string());
            b.push_str(&format!("exit code:    {code}\n"));
            if let Some(error) = &run.error {
                b.push_str(&format!("error:        {error}\n"));
            }
        }
        b.push_str(&format!("\n{}\n", self.detail));
        if let Some(run) = &self.run
            && !run.output_tail.is_empty()
        {
            b.push_str("\noutput (tail):\n");
            b.push_str(&run.output_tail);
            b.push('\n');
        }
        if !base_url.is_empty() {
            match (&self.job, &self.run) {
                (Some(job), Some(run)) => {
                    b.push_str(&format!("\n{base_url}/jobs/{}/runs/{}\n", job.id, run.id))
                }
                (Some(job), None) => b.push_str(&format!("\n{base_url}/jobs/{}\n", job.id)),
                _ => b.push_str(&format!("\n{base_url}\n")),
            }
        }
        b
    }

    /// The SMS text: the kind, the job and the time, within 160 characters.
    pub fn sms_text(&self) -> String {
        let about = match (&self.job, &self.run) {
            (Some(job), Some(run)) => format!(" job {} {} run {}", job.id, job.name, run.id),
            (Some(job), None) => format!(" job {} {}", job.id, job.name),
            _ => format!(" {}", first_line(&self.detail)),
        };
        let text = format!(
            "gocron {}{about} {}",
            self.kind,
            self.found_at.format("%Y-%m-%d %H:%M:%SZ")
        );
        text.chars().take(SMS_CHARS).collect()
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> AlarmFacts {
        let at = DateTime::parse_from_rfc3339("2026-11-21T08:30:05Z")
            .unwrap()
            .with_timezone(&Utc);
        AlarmFacts {
            kind: AlarmKind::RunFailed,
            job: Some(JobFacts {
                id: 12,
                name: "backup".into(),
                rule: "0 3 * * *".into(),
                command: "backup.sh".into(),
            }),
            run: Some(RunFacts {
                id: 99,
                executor: "exec-a@10.0.0.1:7070".into(),
                scheduled_at: at,
                started_at: Some(at),
                finished_at: Some(at),
                status: "failed".into(),
                exit_code: Some(3),
                error: Some("exited with code 3".into()),
                output_tail: "disk full".into(),
            }),
            host: "exec-a@10.0.0.1:7070".into(),
            detail: "run 99 ended failed".into(),
            found_at: at,
        }
    }

    #[test]
    fn subject_body_and_sms_carry_the_facts() {
        let f = facts();
        assert_eq!(
            f.subject(),
            "[gocron] run_failed: job 12 \"backup\" on exec-a@10.0.0.1:7070"
        );
        let body = f.mail_body("https://cron.example");
        for needle in [
            "job id:       12",
            "job name:     backup",
            "rule:         0 3 * * *",
            "command:      backup.sh",
            "run id:       99",
            "executor:     exec-a@10.0.0.1:7070",
            "scheduled at: 2026-11-21T08:30:05.000Z",
            "status:       failed",
            "exit code:    3",
            "disk full",
            "https://cron.example/jobs/12/runs/99",
        ] {
            assert!(body.contains(needle), "{needle:?} missing from:\n{body}");
        }
        assert_eq!(
            f.sms_text(),
            "gocron run_failed job 12 backup run 99 2026-11-21 08:30:05Z"
        );
    }

    #[test]
    fn tails_keep_the_end() {
        let long: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&long);
        assert!(t.starts_with("line 80") && t.ends_with("line 99"), "{t}");
        assert_eq!(tail(&"é".repeat(3000)).chars().count(), 1024);
    }
}
