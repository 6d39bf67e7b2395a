//! `gocron-rule-bench`: how fast next fire instants are computed, and what a million schedules
//! weigh. A command that prints figures, not a test.
//!
//! It builds N [`Schedule`]s (default 1,000,000) from a fixed mix of rules and zones, resembling a
//! large installation: mostly daily jobs at varied times, then every-minute and stepped rules,
//! weekday lists, Quartz extras, monthly rules, seconds rules and `@every`, in UTC,
//! Asia/Shanghai, America/New_York, Europe/Berlin, Australia/Lord_Howe and Asia/Kolkata. Each
//! schedule then computes 5 successive fire instants from a start spread over 2026 (so DST
//! changes are crossed), all in memory order (mixed), then again group by group.

use std::fmt;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use gocron_shared::rule::Schedule;

/// Successive instants computed per schedule.
const CHAIN: usize = 5;

/// A kind of rule in the mix: name, weight (of 100), and a maker from a random number.
type Kind = (&'static str, u64, fn(u64) -> String);

/// The kinds of rule in the mix.
const KINDS: &[Kind] = &[
    ("daily (`M H * * *`)", 55, |r| {
        format!("{} {} * * *", r % 60, r / 60 % 24)
    }),
    ("every minute / `*/n`", 8, |r| {
        ["* * * * *", "*/5 * * * *", "*/15 * * * *"][(r % 3) as usize].to_owned()
    }),
    ("steps in hours", 10, |r| {
        [
            "*/10 8-18 * * *",
            "0 */2 * * *",
            "15 */6 * * *",
            "0 9-17/2 * * *",
        ][(r % 4) as usize]
            .to_owned()
    }),
    ("weekday lists", 10, |r| match r % 3 {
        0 => format!("{} {} * * 1-5", r / 3 % 60, r / 180 % 24),
        1 => "0 9 * * MON,WED,FRI".to_owned(),
        _ => "30 7 * * SAT,SUN".to_owned(),
    }),
    ("Quartz L, W, #", 5, |r| {
        [
            "0 0 L * *",
            "0 12 * * 5#3",
            "0 18 * * 5L",
            "0 9 15W * *",
            "0 8 LW * *",
        ][(r % 5) as usize]
            .to_owned()
    }),
    ("monthly, yearly", 4, |r| {
        ["0 6 1 * *", "@monthly", "@yearly", "0 0 1,15 * *"][(r % 4) as usize].to_owned()
    }),
    ("seconds (6 fields)", 3, |r| {
        ["*/10 * * * * *", "0 */5 * * * *"][(r % 2) as usize].to_owned()
    }),
    ("@every", 5, |r| {
        ["@every 30s", "@every 1h30m", "@every 2d"][(r % 3) as usize].to_owned()
    }),
];

/// The zones in the mix, with weights (of 100).
const ZONES: &[(&str, u64)] = &[
    ("UTC", 40),
    ("Asia/Shanghai", 20),
    ("America/New_York", 20),
    ("Europe/Berlin", 10),
    ("Australia/Lord_Howe", 5),
    ("Asia/Kolkata", 5),
];

/// What one run measured.
#[derive(Debug)]
pub struct Report {
    /// Schedules built.
    pub schedules: usize,
    /// Average time of one `Schedule::new` (parse included).
    pub parse: Duration,
    /// `size_of::<Schedule>()`.
    pub size_of: usize,
    /// Growth of the resident set while building them, if `/proc/self/status` says.
    pub rss_delta: Option<u64>,
    /// The first `next_after` in America/New_York: builds that zone's offset table.
    pub first_zone_use: Duration,
    /// Average `next_after` over all schedules, in memory order.
    pub mixed: Duration,
    /// Average `next_after` per kind of rule: (name, share of schedules, average).
    pub by_kind: Vec<(&'static str, u64, Duration)>,
    /// Average `next_after` per zone: (name, share of schedules, average).
    pub by_zone: Vec<(&'static str, u64, Duration)>,
}

/// A small deterministic generator (xorshift64*): the same mix on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// An index into `weights` (which sum to 100).
    fn pick<T>(&mut self, weights: &[T], weight: impl Fn(&T) -> u64) -> usize {
        let mut roll = self.next() % 100;
        for (i, w) in weights.iter().enumerate() {
            if roll < weight(w) {
                return i;
            }
            roll -= weight(w);
        }
        weights.len() - 1
    }
}

/// The resident set size of this process, in bytes (Linux).
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Starts spread over 2026, second-grained, so that DST changes are crossed.
fn start_of(i: usize) -> DateTime<Utc> {
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    base + chrono::Duration::seconds((i as i64 * 7_919) % (365 * 86_400))
}

/// Average time of one `next_after` over the schedules at `indices` (`CHAIN` each).
fn time_next(schedules: &[Schedule], indices: impl Iterator<Item = usize>) -> Duration {
    let mut calls = 0u32;
    let started = Instant::now();
    for i in indices {
        let mut t = start_of(i);
        for _ in 0..CHAIN {
            match black_box(&schedules[i]).next_after(black_box(t)) {
                Some(next) => t = next,
                None => break,
            }
            calls += 1;
        }
    }
    started.elapsed() / calls.max(1)
}

/// Builds `n` schedules and measures them.
pub fn run(n: usize) -> Report {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let zones: Vec<Tz> = ZONES.iter().map(|(z, _)| z.parse().unwrap()).collect();
    let mut kind_of = Vec::with_capacity(n);
    let mut zone_of = Vec::with_capacity(n);
    let rules: Vec<(String, Tz)> = (0..n)
        .map(|_| {
            let kind = rng.pick(KINDS, |k| k.1);
            let zone = rng.pick(ZONES, |z| z.1);
            kind_of.push(kind);
            zone_of.push(zone);
            (KINDS[kind].2(rng.next()), zones[zone])
        })
        .collect();

    let rss_before = rss();
    let started = Instant::now();
    let mut schedules = Vec::with_capacity(n);
    for (rule, tz) in &rules {
        schedules.push(Schedule::new(rule, *tz).expect("the benchmark's rules are valid"));
    }
    let parse = started.elapsed() / n.max(1) as u32;
    let rss_delta = rss_before
        .zip(rss())
        .map(|(before, after)| after.saturating_sub(before));
    drop(rules);

    let started = Instant::now();
    black_box(
        Schedule::new("0 3 * * *", zones[2])
            .unwrap()
            .next_after(start_of(0)),
    );
    let first_zone_use = started.elapsed();
    // Build the other zones' tables too, outside the timings.
    for tz in &zones {
        black_box(
            Schedule::new("0 3 * * *", *tz)
                .unwrap()
                .next_after(start_of(0)),
        );
    }

    let mixed = time_next(&schedules, 0..n);
    let share = |count: usize| (count * 100 / n.max(1)) as u64;
    let by_kind = KINDS
        .iter()
        .enumerate()
        .map(|(k, (name, _, _))| {
            let indices: Vec<usize> = (0..n).filter(|&i| kind_of[i] == k).collect();
            (
                *name,
                share(indices.len()),
                time_next(&schedules, indices.into_iter()),
            )
        })
        .collect();
    let by_zone = ZONES
        .iter()
        .enumerate()
        .map(|(z, (name, _))| {
            let indices: Vec<usize> = (0..n).filter(|&i| zone_of[i] == z).collect();
            (
                *name,
                share(indices.len()),
                time_next(&schedules, indices.into_iter()),
            )
        })
        .collect();
    Report {
        schedules: n,
        parse,
        size_of: std::mem::size_of::<Schedule>(),
        rss_delta,
        first_zone_use,
        mixed,
        by_kind,
        by_zone,
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = |d: Duration| d.as_nanos();
        writeln!(f, "schedules:        {}", self.schedules)?;
        writeln!(
            f,
            "Schedule::new:    {} ns each (parse included)",
            ns(self.parse)
        )?;
        match self.rss_delta {
            Some(bytes) => writeln!(
                f,
                "memory:           {:.1} MiB resident for {} schedules ({} B each; size_of::<Schedule>() = {} B, the rest is the rule text and Quartz extras on the heap)",
                bytes as f64 / (1024.0 * 1024.0),
                self.schedules,
                bytes / self.schedules.max(1) as u64,
                self.size_of
            )?,
            None => writeln!(
                f,
                "memory:           size_of::<Schedule>() = {} B (no /proc/self/status)",
                self.size_of
            )?,
        }
        writeln!(
            f,
            "first use of a zone (America/New_York offset table built): {:.1} ms",
            self.first_zone_use.as_secs_f64() * 1000.0
        )?;
        writeln!(
            f,
            "next_after:       {} ns average over {} computations ({CHAIN} successive per schedule, mixed order)",
            ns(self.mixed),
            self.schedules * CHAIN
        )?;
        for (title, rows) in [("by rule", &self.by_kind), ("by zone", &self.by_zone)] {
            writeln!(f, "  {title}:")?;
            for (name, share, avg) in rows {
                writeln!(f, "    {name:<24} {share:>3} %  {:>5} ns", ns(*avg))?;
            }
        }
        Ok(())
    }
}
