//! The wall-clock search: the first local date and time at or after a given one that a
//! [`CronExpr`] matches, with no time zone involved.
//!
//! Local times are counted as seconds since 1970-01-01T00:00 *on the wall clock* ("local
//! seconds"). The search skips forward field by field: a year the year field excludes, then a
//! month the month field excludes, then, within a month, straight to the next matching day
//! (one bitmask for the whole month, built from the day-of-month and day-of-week fields), then
//! to the next matching hour, minute and second with `trailing_zeros`. Nothing allocates.

use super::expr::{CronExpr, DOM_STAR, DOW_STAR, Extras, YEAR_MAX, YEAR_MIN};

/// How far ahead a search looks: one full Gregorian cycle, after which the calendar repeats, so
/// a rule that matches nothing in it never matches (`0 0 30 2 *`).
const HORIZON_YEARS: i64 = 400;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub(super) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// 0 = Sunday; 1970-01-01 was a Thursday.
fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

/// The lowest set bit of `mask` at position `from` or above.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let m = mask & (u64::MAX << from);
    (m != 0).then(|| m.trailing_zeros())
}

impl CronExpr {
    /// The first local second at or after `from` that the rule matches; `None` if there is none
    /// within [`HORIZON_YEARS`] (or after the last year of a year field).
    pub(super) fn next_local(&self, from: i64) -> Option<i64> {
        let (mut y, mut m, mut d) = civil_from_days(from.div_euclid(86_400));
        let sod = from.rem_euclid(86_400) as u32;
        // The time of day to start from; reset to midnight whenever the day moves on.
        let mut time = (sod / 3600, sod / 60 % 60, sod % 60);
        let limit = y + HORIZON_YEARS;
        let years = self.extras.as_ref().and_then(|x| x.years.as_ref());
        loop {
            if y > limit {
                return None;
            }
            if let Some(years) = years {
                match next_year(years, y) {
                    Some(next) if next == y => {}
                    Some(next) => (y, m, d, time) = (next, 1, 1, (0, 0, 0)),
                    None => return None,
                }
            }
            if self.months & (1 << m) == 0 {
                match next_bit(u64::from(self.months), m) {
                    Some(next) => (m, d, time) = (next, 1, (0, 0, 0)),
                    None => {
                        (y, m, d, time) = (y + 1, 1, 1, (0, 0, 0));
                        continue;
                    }
                }
            }
            let days = self.day_mask(y, m);
            while let Some(day) = next_bit(days, d) {
                if day != d {
                    (d, time) = (day, (0, 0, 0));
                }
                if let Some((h, mi, s)) = self.next_time(time) {
                    return Some(
                        days_from_civil(y, m, d) * 86_400 + i64::from(h * 3600 + mi * 60 + s),
                    );
                }
                (d, time) = (d + 1, (0, 0, 0));
            }
            (m, d, time) = (m + 1, 1, (0, 0, 0));
            if m > 12 {
                (y, m) = (y + 1, 1);
            }
        }
    }

    /// The first matching time of day at or after `(h, m, s)`, if any is left in the day.
    fn next_time(&self, (h, m, s): (u32, u32, u32)) -> Option<(u32, u32, u32)> {
        let first_second = self.seconds.trailing_zeros();
        let first_minute = self.minutes.trailing_zeros();
        if self.hours & (1 << h) != 0 {
            if self.minutes & (1 << m) != 0 {
                if let Some(s) = next_bit(self.seconds, s) {
                    return Some((h, m, s));
                }
            }
            if let Some(m) = next_bit(self.minutes, m + 1) {
                return Some((h, m, first_second));
            }
        }
        let h = next_bit(u64::from(self.hours), h + 1)?;
        Some((h, first_minute, first_second))
    }

    /// The days of month `m` of year `y` that match, bit `d` for day `d`.
    ///
    /// Day-of-month and day-of-week combine by cronie's rule: if either field starts with `*`
    /// a day must match both, otherwise it must match either.
    fn day_mask(&self, y: i64, m: u32) -> u64 {
        let len = days_in_month(y, m);
        let first = weekday(days_from_civil(y, m, 1));
        let mut dom = u64::from(self.days);
        // The weekday pattern, rotated so that bit 0 is the 1st of the month, then repeated
        // five times (7 * 5 = 35 days covers any month) and shifted so that bit d is day d.
        let w = u64::from(self.weekdays);
        let rotated = ((w >> first) | (w << (7 - first))) & 0x7f;
        let mut dow = (rotated * 0x1020_4081) << 1;
        if let Some(x) = &self.extras {
            dom |= x.month_days(len, first);
            dow |= x.month_weekdays(len, first);
        }
        let both = if self.flags & (DOM_STAR | DOW_STAR) != 0 {
            dom & dow
        } else {
            dom | dow
        };
        both & ((1 << (len + 1)) - 2)
    }
}

/// The first year at or after `y` in a year field's set.
fn next_year(years: &[u64; 3], y: i64) -> Option<i64> {
    let from = y.max(i64::from(YEAR_MIN)) - i64::from(YEAR_MIN);
    if y > i64::from(YEAR_MAX) {
        return None;
    }
    let from = from as u32;
    (from / 64..3).find_map(|word| {
        let start = if word == from / 64 { from % 64 } else { 0 };
        next_bit(years[word as usize], start)
            .map(|bit| i64::from(YEAR_MIN) + i64::from(word * 64 + bit))
    })
}

impl Extras {
    /// The days the day-of-month extras (`L`, `L-k`, `LW`, `nW`) name in a month of `len` days
    /// whose 1st is weekday `first`.
    fn month_days(&self, len: u32, first: u32) -> u64 {
        let mut days = 0u64;
        let mut minus = self.last_minus;
        while minus != 0 {
            let k = minus.trailing_zeros();
            minus &= minus - 1;
            if k < len {
                days |= 1 << (len - k);
            }
        }
        let weekday_of = |d: u32| (first + d - 1) % 7;
        if self.last_weekday {
            days |= 1
                << match weekday_of(len) {
                    6 => len - 1,
                    0 => len - 2,
                    _ => len,
                };
        }
        let mut nearest = self.nearest_weekday;
        while nearest != 0 {
            let n = nearest.trailing_zeros();
            nearest &= nearest - 1;
            // Quartz: the weekday nearest to day n, never leaving the month; a month without
            // day n has no such day.
            if n <= len {
                days |= 1
                    << match weekday_of(n) {
                        6 if n == 1 => 3,
                        6 => n - 1,
                        0 if n == len => n - 2,
                        0 => n + 1,
                        _ => n,
                    };
            }
        }
        days
    }

    /// The days the day-of-week extras (`wL`, `w#k`) name in such a month.
    fn month_weekdays(&self, len: u32, first: u32) -> u64 {
        let mut days = 0u64;
        let last = (first + len - 1) % 7;
        let mut last_of = self.last_of;
        while last_of != 0 {
            let w = last_of.trailing_zeros();
            last_of &= last_of - 1;
            days |= 1 << (len - (last + 7 - w) % 7);
        }
        let mut nth = self.nth;
        while nth != 0 {
            let bit = nth.trailing_zeros();
            nth &= nth - 1;
            let (k, w) = (bit / 7 + 1, bit % 7);
            let d = 1 + (w + 7 - first) % 7 + 7 * (k - 1);
            if d <= len {
                days |= 1 << d;
            }
        }
        days
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips_and_weekdays() {
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!(d <= days_in_month(y, m));
        }
        assert_eq!(days_from_civil(2026, 3, 8), 20_520);
        assert_eq!(weekday(days_from_civil(2026, 3, 8)), 0); // a Sunday
        assert_eq!(weekday(days_from_civil(1969, 12, 31)), 3); // a Wednesday
        assert!(is_leap(2000) && !is_leap(2100) && is_leap(2024));
    }
}
