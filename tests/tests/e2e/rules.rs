//! The rule engine against an independent reference: croniter (Python), through
//! `scripts/croniter_ref.py`, on a few thousand random 5-field rules with a fixed seed.
//!
//! The generator stays within the syntax where croniter and cronie agree: no ranges that wrap
//! (`FRI-MON`, `22-2`: croniter accepts them, cronie and gocron refuse them), no steps larger
//! than the field, no stepped range of a single value (`2-2/4`: croniter's expansion of it in
//! day-of-week is wrong), no Quartz extras (croniter has `L` and `#` with other weekday numbers and
//! no `W`), and UTC only (DST is table-tested in `gocron-shared`). croniter ORs a restricted
//! day-of-month with a `*/n` day-of-week (and vice versa) where cronie ANDs them; the script
//! passes croniter `day_or` by cronie's `*`-prefix rule, so that rule is compared too.
//!
//! croniter has bugs of its own that a rule of this generator can meet, rarely: 12 of 40,000
//! rules (another seed) disagreed, each a croniter mistake checked by hand. Starting in late
//! February it misses early March days (`* * */10 * *` after 2011-02-22: croniter says March
//! 11th, but the 1st matches), and it finds nothing when the day of month never exists in the
//! allowed months although an ORed weekday matches (`50/8 0 30-31 FEB 4`: Thursdays in February).
//! The fixed seed here meets none of them; a new seed may, so read a failure with that in mind.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use chrono::{DateTime, SecondsFormat, TimeZone as _, Utc};
use chrono_tz::Tz;
use gocron_shared::rule::Schedule;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RULES: usize = 3000;
const FIRES: usize = 5;

/// The Python to run: `GOCRON_TEST_PYTHON`, else the test venv `scripts/services --test install`
/// makes. Fails (never skips) when neither has croniter.
fn python() -> PathBuf {
    let hint = "the rule tests need a Python with croniter: run `bash scripts/services --test install` \
                (makes var/test/venv) and `eval \"$(bash scripts/services --test env)\"`, or set \
                GOCRON_TEST_PYTHON to a python that can `import croniter`";
    let python = std::env::var_os("GOCRON_TEST_PYTHON").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../var/test/venv/bin/python"
            ))
        },
        PathBuf::from,
    );
    let ok = Command::new(&python)
        .args(["-c", "import croniter"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{} cannot import croniter: {hint}", python.display());
    python
}

/// croniter's next `FIRES` instants for each `(rule, start)`, one line each.
fn croniter(cases: &[(String, DateTime<Utc>)]) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/croniter_ref.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(FIRES.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start scripts/croniter_ref.py");
    let input: String = cases
        .iter()
        .map(|(rule, start)| format!("{rule}\t{}\n", utc(*start)))
        .collect();
    // Written from another thread: croniter's answers fill the stdout pipe meanwhile.
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "croniter_ref.py failed");
    let lines: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines.len(),
        cases.len(),
        "one line per rule from croniter_ref.py"
    );
    lines
}

fn utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Ours, in the script's format.
fn ours(rule: &str, start: DateTime<Utc>) -> String {
    let schedule = Schedule::new(rule, Tz::UTC).unwrap_or_else(|e| panic!("{e}"));
    let mut t = start;
    let mut out = Vec::new();
    for _ in 0..FIRES {
        match schedule.next_after(t) {
            Some(next) => {
                out.push(utc(next));
                t = next;
            }
            None => {
                out.push("NONE".to_owned());
                break;
            }
        }
    }
    out.join(" ")
}

/// A value of the field, sometimes by name in a random case.
fn value(rng: &mut StdRng, v: u32, min: u32, names: &[&str]) -> String {
    match names.get((v - min) as usize) {
        Some(name) if rng.random_bool(0.4) => name
            .chars()
            .map(|c| {
                if rng.random_bool(0.5) {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect(),
        _ => v.to_string(),
    }
}

/// One random field between `min` and `max` (`names` name `min`, `min + 1`, ...).
///
/// Ranges and steps always cover at least two values: croniter mis-expands `9-9` (as `*`),
/// `2-2/4` (day-of-week 0,2,4) and an `a/n` whose first step leaves the field (`59/28` as
/// 0,28,56). `a/n` is left out of day-of-week, where croniter's expansion is wrong too (`6/4`
/// as 0,4; gocron: 6).
fn field(rng: &mut StdRng, min: u32, max: u32, names: &[&str]) -> String {
    let span = max - min + 1;
    let weekdays = names.len() == 7;
    match rng.random_range(0..10) {
        0..=2 => "*".to_owned(),
        3 => format!("*/{}", rng.random_range(1..=span / 2)),
        _ => {
            let items: Vec<String> = (0..rng.random_range(1..=3))
                .map(|_| {
                    let a = rng.random_range(min..max);
                    let b = rng.random_range(a + 1..=max);
                    match rng.random_range(0..6) {
                        0..=2 => value(rng, a, min, names),
                        3 => format!(
                            "{}-{}",
                            value(rng, a, min, names),
                            value(rng, b, min, names)
                        ),
                        5 if !weekdays && a + 1 < max => {
                            format!("{a}/{}", rng.random_range(1..=max - a))
                        }
                        _ => format!("{a}-{b}/{}", rng.random_range(1..=b - a)),
                    }
                })
                .collect();
            items.join(",")
        }
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn random_rule(rng: &mut StdRng) -> String {
    [
        field(rng, 0, 59, &[]),
        field(rng, 0, 23, &[]),
        field(rng, 1, 31, &[]),
        field(rng, 1, 12, &MONTHS),
        field(rng, 0, 7, &WEEKDAYS),
    ]
    .join(" ")
}

#[test]
fn rules_agree_with_croniter() {
    let mut rng = StdRng::seed_from_u64(0x6f63_726f_6e5f_7331);
    let cases: Vec<(String, DateTime<Utc>)> = (0..RULES)
        .map(|_| {
            let rule = random_rule(&mut rng);
            // Any second from 2000 to 2040: not only minute boundaries.
            let start = Utc
                .timestamp_opt(rng.random_range(946_684_800..2_208_988_800), 0)
                .unwrap();
            (rule, start)
        })
        .collect();
    let reference = croniter(&cases);
    let mismatches: Vec<String> = cases
        .iter()
        .zip(&reference)
        .filter_map(|((rule, start), theirs)| {
            let ours = ours(rule, *start);
            (ours != *theirs).then(|| {
                format!(
                    "{rule:?} after {}:\n  gocron:   {ours}\n  croniter: {theirs}",
                    utc(*start)
                )
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {RULES} rules disagree with croniter; the first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(15)].join("\n")
    );
}
