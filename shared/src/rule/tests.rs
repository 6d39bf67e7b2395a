//! Table tests: every syntax element and every DST case, with instants written out.

use super::*;

/// The next `n` fire instants after `from`, as RFC 3339 in the zone (`Z` for UTC).
fn fires(rule: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
    let tz: Tz = tz.parse().unwrap();
    let schedule = Schedule::new(rule, tz).unwrap_or_else(|e| panic!("{e}"));
    let mut t = at(from);
    let mut out = Vec::new();
    for _ in 0..n {
        let Some(next) = schedule.next_after(t) else {
            out.push("none".to_owned());
            break;
        };
        assert!(next > t, "{rule}: {next} is not after {t}");
        out.push(
            next.with_timezone(&tz)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        );
        t = next;
    }
    out
}

/// Asserts each `(rule, zone, from, expected instants)` row.
fn table(rows: &[(&str, &str, &str, &[&str])]) {
    for (rule, tz, from, expected) in rows {
        assert_eq!(
            fires(rule, tz, from, expected.len()),
            *expected,
            "{rule} in {tz} after {from}"
        );
    }
}

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
fn weekday_numbers_count_from_sunday_0_and_7_is_sunday_too() {
    // 2026-03-14 is a Saturday.
    let from = "2026-03-14T00:00:00Z";
    table(&[
        (
            "0 9 * * 0",
            "UTC",
            from,
            &["2026-03-15T09:00:00Z", "2026-03-22T09:00:00Z"],
        ),
        (
            "0 9 * * 7",
            "UTC",
            from,
            &["2026-03-15T09:00:00Z", "2026-03-22T09:00:00Z"],
        ),
        (
            "0 9 * * 1-5",
            "UTC",
            from,
            &["2026-03-16T09:00:00Z", "2026-03-17T09:00:00Z"],
        ),
        (
            "0 9 * * MON-FRI",
            "UTC",
            from,
            &["2026-03-16T09:00:00Z", "2026-03-17T09:00:00Z"],
        ),
        (
            "0 9 * * 5-7",
            "UTC",
            from,
            &[
                "2026-03-14T09:00:00Z",
                "2026-03-15T09:00:00Z",
                "2026-03-20T09:00:00Z",
            ],
        ),
        (
            "0 9 * * sat-SUN",
            "UTC",
            from,
            &[
                "2026-03-14T09:00:00Z",
                "2026-03-15T09:00:00Z",
                "2026-03-21T09:00:00Z",
            ],
        ),
        // a/n in day-of-week ends at Saturday: Monday, Wednesday, Friday.
        (
            "0 9 * * 1/2",
            "UTC",
            from,
            &[
                "2026-03-16T09:00:00Z",
                "2026-03-18T09:00:00Z",
                "2026-03-20T09:00:00Z",
                "2026-03-23T09:00:00Z",
            ],
        ),
    ]);
}

#[test]
fn day_of_month_or_day_of_week_when_both_are_restricted() {
    // 2026-03-01 is a Sunday.
    let from = "2026-03-01T00:00:00Z";
    table(&[
        // Neither starts with `*`: the 1st, the 15th and every Monday.
        (
            "0 0 1,15 * MON",
            "UTC",
            from,
            &[
                "2026-03-02T00:00:00Z",
                "2026-03-09T00:00:00Z",
                "2026-03-15T00:00:00Z",
                "2026-03-16T00:00:00Z",
                "2026-03-23T00:00:00Z",
                "2026-03-30T00:00:00Z",
                "2026-04-01T00:00:00Z",
            ],
        ),
        // `*/10` starts with `*`: days 1, 11, 21, 31 that are Mondays.
        (
            "0 0 */10 * MON",
            "UTC",
            from,
            &[
                "2026-05-11T00:00:00Z",
                "2026-06-01T00:00:00Z",
                "2026-08-31T00:00:00Z",
            ],
        ),
        // `?` is `*`.
        (
            "0 0 ? * MON",
            "UTC",
            from,
            &["2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z"],
        ),
        (
            "0 0 15 * ?",
            "UTC",
            from,
            &["2026-03-15T00:00:00Z", "2026-04-15T00:00:00Z"],
        ),
        (
            "0 0 15 * *",
            "UTC",
            from,
            &["2026-03-15T00:00:00Z", "2026-04-15T00:00:00Z"],
        ),
    ]);
}

#[test]
fn lists_ranges_steps_and_names() {
    let from = "2026-03-01T10:00:00Z";
    table(&[
        (
            "5/15 * * * *",
            "UTC",
            from,
            &[
                "2026-03-01T10:05:00Z",
                "2026-03-01T10:20:00Z",
                "2026-03-01T10:35:00Z",
                "2026-03-01T10:50:00Z",
                "2026-03-01T11:05:00Z",
            ],
        ),
        (
            "10-30/10,45 * * * *",
            "UTC",
            from,
            &[
                "2026-03-01T10:10:00Z",
                "2026-03-01T10:20:00Z",
                "2026-03-01T10:30:00Z",
                "2026-03-01T10:45:00Z",
                "2026-03-01T11:10:00Z",
            ],
        ),
        (
            "0 */6 * * *",
            "UTC",
            from,
            &[
                "2026-03-01T12:00:00Z",
                "2026-03-01T18:00:00Z",
                "2026-03-02T00:00:00Z",
            ],
        ),
        (
            "0 0 1 jan,Jul *",
            "UTC",
            from,
            &["2026-07-01T00:00:00Z", "2027-01-01T00:00:00Z"],
        ),
        (
            "0 0 1 feb-APR/2 *",
            "UTC",
            from,
            &["2026-04-01T00:00:00Z", "2027-02-01T00:00:00Z"],
        ),
        (
            "30 8 29 2 *",
            "UTC",
            from,
            &["2028-02-29T08:30:00Z", "2032-02-29T08:30:00Z"],
        ),
        // Never: no 30th of February.
        ("0 0 30 2 *", "UTC", from, &["none"]),
    ]);
}

#[test]
fn seconds_and_years() {
    table(&[
        (
            "*/7 * * * * * *",
            "UTC",
            "2026-03-01T10:00:50Z",
            &[
                "2026-03-01T10:00:56Z",
                "2026-03-01T10:01:00Z",
                "2026-03-01T10:01:07Z",
            ],
        ),
        (
            "0 0 0 1 1 * 2028,2030",
            "UTC",
            "2026-03-01T10:00:00Z",
            &["2028-01-01T00:00:00Z", "2030-01-01T00:00:00Z", "none"],
        ),
        (
            "0 0 12 * * * 2027-2099/50",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["2027-01-01T12:00:00Z"],
        ),
        (
            "0 0 12 * * * 2020",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["none"],
        ),
        (
            "30 0 0 * * * *",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["2026-03-01T00:00:30Z"],
        ),
    ]);
}

#[test]
fn quartz_last_day_nearest_weekday_last_and_nth_weekday() {
    table(&[
        // L: the last day; L-3: three days before it.
        (
            "0 0 L * *",
            "UTC",
            "2026-02-01T00:00:00Z",
            &[
                "2026-02-28T00:00:00Z",
                "2026-03-31T00:00:00Z",
                "2026-04-30T00:00:00Z",
            ],
        ),
        (
            "0 0 L 2 *",
            "UTC",
            "2027-03-01T00:00:00Z",
            &["2028-02-29T00:00:00Z"],
        ),
        (
            "0 0 L-3 * *",
            "UTC",
            "2026-02-01T00:00:00Z",
            &["2026-02-25T00:00:00Z", "2026-03-28T00:00:00Z"],
        ),
        // LW: 2026-01-31 is a Saturday, 2026-05-31 a Sunday, 2026-03-31 a Tuesday.
        (
            "0 0 LW 1 *",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-01-30T00:00:00Z"],
        ),
        (
            "0 0 LW 5 *",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-05-29T00:00:00Z"],
        ),
        (
            "0 0 LW 3 *",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-03-31T00:00:00Z"],
        ),
        // 15W: 2026-03-15 is a Sunday (-> Monday 16th), 2026-08-15 a Saturday (-> Friday 14th).
        (
            "0 0 15W 3,8 *",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-03-16T00:00:00Z", "2026-08-14T00:00:00Z"],
        ),
        // 1W on Saturday 2026-08-01 stays in August: Monday the 3rd, not Friday July 31st.
        (
            "0 0 1W 8 *",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-08-03T00:00:00Z"],
        ),
        // 31W on Sunday 2026-05-31: Friday the 29th; months without a 31st have none.
        (
            "0 0 31W 4,5 *",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-05-29T00:00:00Z", "2027-05-31T00:00:00Z"],
        ),
        // 5L: the last Friday; 5#3: the third Friday; 0#1 and 7#1: the first Sunday.
        (
            "0 0 * * 5L",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["2026-03-27T00:00:00Z", "2026-04-24T00:00:00Z"],
        ),
        (
            "0 0 * * FRIL",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["2026-03-27T00:00:00Z"],
        ),
        (
            "0 0 * * 5#3",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["2026-03-20T00:00:00Z", "2026-04-17T00:00:00Z"],
        ),
        (
            "0 0 * * fri#3",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["2026-03-20T00:00:00Z"],
        ),
        (
            "0 0 * * 0#1",
            "UTC",
            "2026-03-02T00:00:00Z",
            &["2026-04-05T00:00:00Z"],
        ),
        (
            "0 0 * * 7#1",
            "UTC",
            "2026-03-02T00:00:00Z",
            &["2026-04-05T00:00:00Z"],
        ),
        // #5 only in months with five of that weekday: Mondays in 2026: March has five (30th).
        (
            "0 0 * * 1#5",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["2026-03-30T00:00:00Z", "2026-06-29T00:00:00Z"],
        ),
        // Quartz style with `?`: the third Friday only.
        (
            "0 0 12 ? * 5#3",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["2026-03-20T12:00:00Z"],
        ),
        // Both restricted: OR, the last day or the last Friday.
        (
            "0 0 L * 5L",
            "UTC",
            "2026-03-01T00:00:00Z",
            &["2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z"],
        ),
    ]);
}

#[test]
fn at_is_one_shot() {
    let schedule = Schedule::new("@at 2026-05-01T09:00:00+02:00", Tz::UTC).unwrap();
    assert!(schedule.is_one_shot());
    assert!(!Schedule::new("@daily", Tz::UTC).unwrap().is_one_shot());
    assert_eq!(
        schedule.next_after(at("2026-04-30T00:00:00Z")),
        Some(at("2026-05-01T07:00:00Z"))
    );
    assert_eq!(schedule.next_after(at("2026-05-01T07:00:00Z")), None);
    assert_eq!(schedule.next_after(at("2026-06-01T00:00:00Z")), None);
    assert_eq!(
        Schedule::new("@AT 2026-05-01T07:00:00.250Z", Tz::UTC)
            .unwrap()
            .next_after(at("2026-05-01T07:00:00Z")),
        Some(at("2026-05-01T07:00:00.250Z"))
    );
    assert_eq!(schedule.to_string(), "@at 2026-05-01T07:00:00Z");
}

#[test]
fn event_rules_name_their_event_and_never_tick() {
    let schedule = Schedule::new("@event  order.paid ", Tz::UTC).unwrap();
    assert_eq!(schedule.rule().event(), Some("order.paid"));
    assert!(!schedule.is_one_shot());
    assert_eq!(schedule.next_after(at("2026-04-30T00:00:00Z")), None);
    assert_eq!(schedule.to_string(), "@event order.paid");
    assert_eq!(
        Schedule::new("@daily", Tz::UTC).unwrap().rule().event(),
        None
    );
    for (rule, message) in [
        (
            "@event",
            "@event needs an event name, such as @event order.paid",
        ),
        (
            "@event order paid",
            "the event name \"order paid\" holds ' ' (allowed: letters, digits, . _ - : /)",
        ),
    ] {
        assert_eq!(Schedule::new(rule, Tz::UTC).unwrap_err().message, message);
    }
    let long = format!("@event {}", "e".repeat(256));
    assert!(Schedule::new(&long, Tz::UTC).is_err());
}

#[test]
fn new_york_spring_forward() {
    // 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00Z); 02:00-02:59 does not exist.
    let from = "2026-03-07T12:00:00Z";
    table(&[
        // Fixed time in the gap: once, at the end of the gap.
        (
            "30 2 * * *",
            "America/New_York",
            from,
            &["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
        ),
        (
            "0,30 2 * * *",
            "America/New_York",
            from,
            &["2026-03-08T03:00:00-04:00", "2026-03-09T02:00:00-04:00"],
        ),
        (
            "0,30 2,3 * * *",
            "America/New_York",
            from,
            &[
                "2026-03-08T03:00:00-04:00",
                "2026-03-08T03:30:00-04:00",
                "2026-03-09T02:00:00-04:00",
            ],
        ),
        (
            "0 3 * * *",
            "America/New_York",
            from,
            &["2026-03-08T03:00:00-04:00"],
        ),
        (
            "0 1 * * *",
            "America/New_York",
            from,
            &["2026-03-08T01:00:00-05:00", "2026-03-09T01:00:00-04:00"],
        ),
        // Wildcard rules: real elapsed time, nothing for the minutes that do not exist.
        (
            "*/15 * * * *",
            "America/New_York",
            "2026-03-08T06:30:00Z",
            &[
                "2026-03-08T01:45:00-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-08T03:15:00-04:00",
            ],
        ),
        (
            "*/20 2 * * *",
            "America/New_York",
            from,
            &["2026-03-09T02:00:00-04:00"],
        ),
        (
            "0 * * * *",
            "America/New_York",
            "2026-03-08T05:30:00Z",
            &["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00"],
        ),
    ]);
}

#[test]
fn new_york_fall_back() {
    // 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00Z); 01:00-01:59 happens twice.
    let from = "2026-10-31T12:00:00Z";
    table(&[
        // Fixed time in the repeated hour: once, the first time.
        (
            "30 1 * * *",
            "America/New_York",
            from,
            &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
        (
            "30 1 * * *",
            "America/New_York",
            "2026-11-01T06:10:00Z",
            &["2026-11-02T01:30:00-05:00"],
        ),
        (
            "30 2 * * *",
            "America/New_York",
            from,
            &["2026-11-01T02:30:00-05:00"],
        ),
        (
            "0 0-3 * * *",
            "America/New_York",
            from,
            &[
                "2026-11-01T00:00:00-04:00",
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T02:00:00-05:00",
                "2026-11-01T03:00:00-05:00",
            ],
        ),
        // Wildcard rules run in both passes.
        (
            "*/30 * * * *",
            "America/New_York",
            "2026-11-01T05:00:00Z",
            &[
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:30:00-05:00",
                "2026-11-01T02:00:00-05:00",
            ],
        ),
        (
            "15 * * * *",
            "America/New_York",
            from,
            &["2026-10-31T08:15:00-04:00"],
        ),
        (
            "15 * * * *",
            "America/New_York",
            "2026-11-01T05:00:00Z",
            &[
                "2026-11-01T01:15:00-04:00",
                "2026-11-01T01:15:00-05:00",
                "2026-11-01T02:15:00-05:00",
            ],
        ),
        (
            "*/20 1 * * *",
            "America/New_York",
            "2026-11-01T04:50:00Z",
            &[
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:20:00-04:00",
                "2026-11-01T01:40:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:20:00-05:00",
                "2026-11-01T01:40:00-05:00",
                "2026-11-02T01:00:00-05:00",
            ],
        ),
    ]);
}

#[test]
fn yearly_wildcard_rule_across_both_changes() {
    // After 01:50 EDT on the fall-back day, the next 01:xx is the second pass the same night,
    // even though the next such local date a year later is also in EDT.
    table(&[(
        "*/15 1 1 11 *",
        "America/New_York",
        "2026-11-01T05:50:00Z",
        &["2026-11-01T01:00:00-05:00", "2026-11-01T01:15:00-05:00"],
    )]);
}

#[test]
fn berlin() {
    table(&[
        // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00Z).
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            &["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        (
            "*/30 * * * *",
            "Europe/Berlin",
            "2026-03-29T00:15:00Z",
            &["2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00"],
        ),
        // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00Z).
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T12:00:00Z",
            &["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
        (
            "0,30 * * * *",
            "Europe/Berlin",
            "2026-10-24T23:45:00Z",
            &[
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ],
        ),
    ]);
}

#[test]
fn lord_howe_half_hour_shift() {
    table(&[
        // 2026-10-04: 02:00 +10:30 becomes 02:30 +11:00; 02:15 does not exist.
        (
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2026-10-03T00:00:00Z",
            &["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"],
        ),
        (
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2026-10-03T15:10:00Z",
            &["2026-10-04T01:45:00+10:30", "2026-10-04T02:30:00+11:00"],
        ),
        // 2026-04-05: 02:00 +11:00 becomes 01:30 +10:30; 01:30-01:59 happens twice.
        (
            "45 1 * * *",
            "Australia/Lord_Howe",
            "2026-04-04T00:00:00Z",
            &["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
        ),
        (
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2026-04-04T14:20:00Z",
            &[
                "2026-04-05T01:30:00+11:00",
                "2026-04-05T01:45:00+11:00",
                "2026-04-05T01:30:00+10:30",
                "2026-04-05T01:45:00+10:30",
                "2026-04-05T02:00:00+10:30",
            ],
        ),
    ]);
}

#[test]
fn shanghai_and_fixed_offset_zones() {
    table(&[
        (
            "0 9 * * *",
            "Asia/Shanghai",
            "2026-06-01T00:00:00Z",
            &["2026-06-01T09:00:00+08:00", "2026-06-02T09:00:00+08:00"],
        ),
        (
            "0 9 * * *",
            "Etc/GMT+5",
            "2026-06-01T00:00:00Z",
            &["2026-06-01T09:00:00-05:00"],
        ),
    ]);
}

#[test]
fn display_shows_the_rule_as_written() {
    let s = Schedule::new(" 0 9 * * mon-fri ", "Europe/Berlin".parse().unwrap()).unwrap();
    assert_eq!(s.to_string(), "0 9 * * mon-fri in Europe/Berlin");
    let s = Schedule::new("@Daily", Tz::UTC).unwrap();
    assert_eq!(s.to_string(), "@Daily in UTC");
    assert_eq!(
        Schedule::new("@every 90m", Tz::UTC).unwrap().to_string(),
        "@every 5400s in UTC"
    );
}

#[test]
fn invalid_rules_say_what_and_where() {
    for (rule, message) in [
        ("", "the rule is empty"),
        (
            "* * *",
            "3 fields; expected 5 (min hour day month weekday), 6 (seconds first) or 7 (seconds first, year last)",
        ),
        ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
        ("x5 * * * *", "minute field \"x5\": \"x5\" is not a number"),
        (
            "0 0 * * 1-9",
            "day-of-week field \"1-9\": 9 is out of range 0-7",
        ),
        (
            "0 0 * * FOO",
            "day-of-week field \"FOO\": \"FOO\" is not a number or a name (SUN-SAT)",
        ),
        ("0 0 * 13 *", "month field \"13\": 13 is out of range 1-12"),
        (
            "0 0 * Jux *",
            "month field \"Jux\": \"Jux\" is not a number or a name (JAN-DEC)",
        ),
        ("0 24 * * *", "hour field \"24\": 24 is out of range 0-23"),
        (
            "0 0 0 * *",
            "day-of-month field \"0\": 0 is out of range 1-31",
        ),
        (
            "60 * * * * *",
            "second field \"60\": 60 is out of range 0-59",
        ),
        (
            "0 0 0 * * * 1969",
            "year field \"1969\": 1969 is out of range 1970-2099",
        ),
        (
            "0 0 5-2 * *",
            "day-of-month field \"5-2\": range 5-2 goes backwards (write it as two ranges)",
        ),
        (
            "0 0 * * FRI-MON",
            "day-of-week field \"FRI-MON\": range FRI-MON goes backwards (write it as two ranges)",
        ),
        (
            "*/0 * * * *",
            "minute field \"*/0\": step 0 is not between 1 and 60",
        ),
        (
            "*/x * * * *",
            "minute field \"*/x\": step \"x\" is not a number",
        ),
        (
            "1,,2 * * * *",
            "minute field \"1,,2\": an empty list element",
        ),
        (
            "0 0 L-31 * *",
            "day-of-month field \"L-31\": \"L-31\": L-n needs n between 0 and 30",
        ),
        (
            "0 0 32W * *",
            "day-of-month field \"32W\": 32 is out of range 1-31",
        ),
        (
            "0 0 * * 5#6",
            "day-of-week field \"5#6\": \"5#6\": the week number after # must be 1-5",
        ),
        (
            "0 0 * * L",
            "day-of-week field \"L\": L in day-of-week needs a weekday before it, e.g. 5L (the last Friday)",
        ),
        (
            "0 0 W * *",
            "day-of-month field \"W\": \"\" is not a number",
        ),
        ("L * * * *", "minute field \"L\": \"L\" is not a number"),
        (
            "99999999999 * * * *",
            "minute field \"99999999999\": 99999999999 is out of range 0-59",
        ),
        (
            "@often",
            "unknown macro \"@often\" (known: @yearly @annually @monthly @weekly @daily @midnight @hourly @every @at @event)",
        ),
        ("@daily 5", "@daily takes no argument, found \"5\""),
        (
            "@every",
            "@every needs a duration like 30s, 5m, 1h30m or 2d, not \"\"",
        ),
        ("@every 0s", "@every needs a period of at least 1s"),
        (
            "@every 5x",
            "@every needs a duration like 30s, 5m, 1h30m or 2d, not \"5x\"",
        ),
        (
            "@every 5",
            "@every needs a duration like 30s, 5m, 1h30m or 2d, not \"5\"",
        ),
        (
            "@every 2305843009213693952s",
            "@every is limited to 100 years",
        ),
        (
            "@every 99999999999999999999999s",
            "@every needs a duration like 30s, 5m, 1h30m or 2d, not \"99999999999999999999999s\"",
        ),
        (
            "@at tomorrow",
            "@at needs an RFC 3339 instant like 2026-05-01T09:00:00+02:00, not \"tomorrow\"",
        ),
        (
            "@at 2026-05-01T09:00:00",
            "@at needs an RFC 3339 instant like 2026-05-01T09:00:00+02:00, not \"2026-05-01T09:00:00\"",
        ),
    ] {
        let err = Rule::parse(rule).unwrap_err();
        assert_eq!(err.message, message, "{rule}");
        assert_eq!(err.rule, rule);
        assert_eq!(err.to_string(), format!("invalid rule {rule:?}: {message}"));
    }
}

#[test]
fn next_after_is_fast_enough_to_notice_a_regression() {
    // Not a benchmark (see gocron-rule-bench): a guard against an accidental slow path, with a
    // bound loose enough for a debug build on a busy machine.
    let schedules: Vec<Schedule> = [
        ("0 3 * * *", "America/New_York"),
        ("*/5 * * * *", "Europe/Berlin"),
        ("0 0 L * *", "UTC"),
    ]
    .iter()
    .map(|(r, tz)| Schedule::new(r, tz.parse().unwrap()).unwrap())
    .collect();
    let start = std::time::Instant::now();
    let mut t = at("2026-01-01T00:00:00Z");
    for i in 0..30_000 {
        t = schedules[i % 3].next_after(t).unwrap();
        if t > at("2090-01-01T00:00:00Z") {
            t = at("2026-01-01T00:00:00Z");
        }
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// Brute force of cronie's DST rule, minute by minute, with chrono-tz's own offsets: the next
/// fire instant after `after` (a whole minute) of a rule that fires on whole minutes.
fn brute_force(expr: &CronExpr, tz: Tz, after: i64) -> i64 {
    use chrono::Offset as _;
    let local = |t: i64| {
        let utc = DateTime::from_timestamp(t, 0).unwrap().naive_utc();
        t + i64::from(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc())
    };
    let matches = |l: i64| expr.next_local(l) == Some(l);
    // The wall clock's high-water mark: every local time up to it has had its turn.
    let mut mark = (after - 86_400..=after)
        .step_by(60)
        .map(local)
        .max()
        .unwrap();
    let mut t = after + 60;
    loop {
        let l = local(t);
        let fires = if expr.is_fixed_time() {
            (mark + 60..=l).step_by(60).any(matches)
        } else {
            matches(l)
        };
        if fires {
            return t;
        }
        mark = mark.max(l);
        t += 60;
        assert!(t < after + 8 * 86_400, "no fire within 8 days");
    }
}

#[test]
fn dst_rule_agrees_with_a_minute_by_minute_brute_force() {
    let rules = [
        "30 2 * * *",
        "0,30 1-3 * * *",
        "45 1 * * *",
        "15 2 * * *",
        "0 3 * * *",
        "*/15 * * * *",
        "15 * * * *",
        "*/20 1 * * *",
        "*/20 2 * * *",
        "0 * * * *",
        "@daily",
        "5 2 * * SUN",
    ];
    // Around each change of 2026 (UTC): New York, Berlin, Lord Howe.
    let cases = [
        ("America/New_York", "2026-03-08T07:00:00Z"),
        ("America/New_York", "2026-11-01T06:00:00Z"),
        ("Europe/Berlin", "2026-03-29T01:00:00Z"),
        ("Europe/Berlin", "2026-10-25T01:00:00Z"),
        ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
        ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),
    ];
    for (zone, change) in cases {
        let tz: Tz = zone.parse().unwrap();
        let change = at(change).timestamp();
        for rule in rules {
            let schedule = Schedule::new(rule, tz).unwrap();
            let Rule::Cron(expr) = schedule.rule() else {
                unreachable!()
            };
            for after in (change - 4 * 3600..change + 4 * 3600).step_by(13 * 60) {
                let ours = schedule
                    .next_after(DateTime::from_timestamp(after, 0).unwrap())
                    .unwrap()
                    .timestamp();
                assert_eq!(
                    ours,
                    brute_force(expr, tz, after),
                    "{rule} in {zone} after {}",
                    DateTime::from_timestamp(after, 0).unwrap()
                );
            }
        }
    }
}
