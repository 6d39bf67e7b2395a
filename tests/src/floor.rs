//! The benchmark's floor: the least any scheduler can do to start N shell jobs a second here.
//!
//! [`spawn_window`] is a minimal spawner, with no scheduler, database or RPC: at each whole
//! second of its window it starts the same N commands as fast as it can, one after the other
//! from one thread, with [`std::process::Command`] (no `pre_exec` hook, so std uses
//! `posix_spawn`), and a second thread reaps them. Each command gets the environment an executor
//! gives a shell job (`GOCRON_JOB_ID`, `GOCRON_SCHEDULED_AT`, …), so the benchmark's own job
//! command measures its start the same way for the floor as for gocron. `gocron-bench` runs it in
//! a process of its own (`gocron-bench floor …`), so that its CPU time is its own.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{SecondsFormat, TimeZone, Utc};

/// What one spawner window did.
#[derive(Debug, Clone, Copy)]
pub struct FloorReport {
    /// Commands started.
    pub started: u64,
    /// Commands that could not be started.
    pub failed: u64,
    /// The spawner's own CPU time over the window, in seconds (its children excluded).
    pub own_cpu: f64,
    /// The CPU time of its children (the commands), reaped, in seconds.
    pub children_cpu: f64,
}

impl FloorReport {
    /// One line for the parent process to read back.
    pub fn to_line(&self) -> String {
        format!(
            "floor started={} failed={} own_cpu={:.3} children_cpu={:.3}",
            self.started, self.failed, self.own_cpu, self.children_cpu
        )
    }

    /// The inverse of [`FloorReport::to_line`].
    pub fn parse(line: &str) -> Option<FloorReport> {
        let mut r = FloorReport {
            started: 0,
            failed: 0,
            own_cpu: 0.0,
            children_cpu: 0.0,
        };
        let mut rest = line.strip_prefix("floor ")?.split(' ');
        for part in rest.by_ref() {
            let (k, v) = part.split_once('=')?;
            match k {
                "started" => r.started = v.parse().ok()?,
                "failed" => r.failed = v.parse().ok()?,
                "own_cpu" => r.own_cpu = v.parse().ok()?,
                "children_cpu" => r.children_cpu = v.parse().ok()?,
                _ => return None,
            }
        }
        Some(r)
    }
}

/// Starts `jobs` copies of `shell -c command` at each whole second from `from_ms` (Unix
/// milliseconds, a whole second) for `secs` seconds, waits for all of them, and reports.
///
/// A second's burst that is not done by the next second delays that one: like a scheduler that
/// cannot keep up, the lag then grows, and the measurement shows it.
pub fn spawn_window(
    shell: &str,
    command: &str,
    jobs: usize,
    from_ms: i64,
    secs: i64,
) -> FloorReport {
    let before = crate::procfs::cpu_times("self").unwrap_or_default();
    let (tx, rx) = std::sync::mpsc::channel::<std::process::Child>();
    let reaper = std::thread::spawn(move || {
        for mut child in rx {
            let _ = child.wait();
        }
    });
    let (home, user) = (
        std::env::var_os("HOME").unwrap_or_else(|| "/".into()),
        std::env::var_os("USER").unwrap_or_default(),
    );
    let mut started = 0;
    let mut failed = 0;
    for s in 0..secs {
        let tick_ms = from_ms + s * 1000;
        // To the microsecond (the kernel's timer slack, some tens of µs, is all it is late by):
        // a sleep counted in whole milliseconds would wake up to 1 ms after the second.
        let tick = UNIX_EPOCH + Duration::from_millis(tick_ms as u64);
        if let Ok(left) = tick.duration_since(SystemTime::now()) {
            std::thread::sleep(left);
        }
        let scheduled = Utc
            .timestamp_millis_opt(tick_ms)
            .single()
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        for job in 0..jobs {
            // The environment an executor gives a shell job (see gocron_executor::runner).
            let spawned = Command::new(shell)
                .arg("-c")
                .arg(command)
                .env_clear()
                .env("HOME", &home)
                .env("USER", &user)
                .env("LOGNAME", &user)
                .env("SHELL", shell)
                .env("PATH", gocron_executor::runner::DEFAULT_PATH)
                .env("LANG", gocron_executor::runner::DEFAULT_LANG)
                .env("GOCRON_JOB_ID", job.to_string())
                .env("GOCRON_JOB_NAME", format!("floor-{job}"))
                .env("GOCRON_RUN_ID", (s as usize * jobs + job).to_string())
                .env("GOCRON_SCHEDULED_AT", &scheduled)
                .env("GOCRON_EXECUTOR", "floor")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            match spawned {
                Ok(child) => {
                    started += 1;
                    let _ = tx.send(child);
                }
                Err(_) => failed += 1,
            }
        }
    }
    drop(tx);
    let _ = reaper.join();
    let spent = crate::procfs::cpu_times("self").unwrap_or_default() - before;
    FloorReport {
        started,
        failed,
        own_cpu: spent.own,
        children_cpu: spent.reaped_children,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_round_trips() {
        let r = FloorReport {
            started: 3,
            failed: 1,
            own_cpu: 0.25,
            children_cpu: 1.5,
        };
        let back = FloorReport::parse(&r.to_line()).expect("parses");
        assert_eq!((back.started, back.failed), (3, 1));
        assert_eq!((back.own_cpu, back.children_cpu), (0.25, 1.5));
    }
}
