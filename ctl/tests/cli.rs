//! `gocronctl` as a user runs it: the built binary, its output and exit codes.

use std::process::{Command, Output};

fn gocronctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gocronctl"))
        .args(args)
        .output()
        .expect("run gocronctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn next_prints_instants_with_the_zone_offset() {
    let out = gocronctl(&[
        "next",
        "30 2 * * *",
        "--tz",
        "America/New_York",
        "--from",
        "2026-03-07T12:00:00Z",
        "--count",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "2026-03-08T03:00:00-04:00\n2026-03-09T02:30:00-04:00\n"
    );
}

#[test]
fn next_defaults_to_five_instants_in_utc() {
    let out = gocronctl(&["next", "0 9 * * MON-FRI", "--from", "2026-03-14T00:00:00Z"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "2026-03-16T09:00:00+00:00\n2026-03-17T09:00:00+00:00\n2026-03-18T09:00:00+00:00\n\
         2026-03-19T09:00:00+00:00\n2026-03-20T09:00:00+00:00\n"
    );
}

#[test]
fn next_without_from_starts_now() {
    let out = gocronctl(&["next", "@every 1s", "--count", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = chrono::DateTime::parse_from_rfc3339(stdout(&out).trim()).unwrap();
    let gap = printed.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(gap.num_seconds().abs() <= 2, "{printed}");
}

#[test]
fn a_one_shot_rule_prints_what_is_left() {
    let out = gocronctl(&[
        "next",
        "@at 2026-05-01T09:00:00+02:00",
        "--tz",
        "Europe/Berlin",
        "--from",
        "2026-01-01T00:00:00Z",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "2026-05-01T09:00:00+02:00\n");
}

#[test]
fn bad_input_goes_to_stderr_with_exit_2() {
    for (args, needle) in [
        (
            &["next", "0 0 * * 1-9"][..],
            "gocronctl: invalid rule \"0 0 * * 1-9\": day-of-week field \"1-9\": 9 is out of range 0-7",
        ),
        (
            &["next", "@daily", "--tz", "Mars/Olympus"],
            "unknown time zone \"Mars/Olympus\"",
        ),
        (
            &["next", "@daily", "--from", "yesterday"],
            "not an RFC 3339 instant",
        ),
    ] {
        let out = gocronctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stdout(&out).is_empty(), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}
