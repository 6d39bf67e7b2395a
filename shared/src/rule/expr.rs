//! A cron expression's fields as bitmasks, and the parser that builds them.
//!
//! Every field becomes a bitmask whose bit `n` means "value `n` matches". The Quartz extras that
//! depend on the month (`L`, `LW`, `15W`, `5L`, `5#3`) cannot be bitmasks of fixed days; they are
//! kept as small rule sets in [`Extras`] and turned into days when a month is examined.

use std::fmt;

/// A cron expression: 5, 6 or 7 fields, parsed. Matching lives in `calendar.rs`.
#[derive(Clone, PartialEq, Eq)]
pub struct CronExpr {
    /// Bits 0-59.
    pub(super) seconds: u64,
    /// Bits 0-59.
    pub(super) minutes: u64,
    /// Bits 0-23.
    pub(super) hours: u32,
    /// Bits 1-31: plain day-of-month values.
    pub(super) days: u32,
    /// Bits 1-12.
    pub(super) months: u16,
    /// Bits 0-6, 0 = Sunday (7 is folded into 0).
    pub(super) weekdays: u8,
    /// [`DOM_STAR`], [`DOW_STAR`], [`FIXED_TIME`].
    pub(super) flags: u8,
    /// Quartz extras and a year field; `None` for the common case.
    pub(super) extras: Option<Box<Extras>>,
    /// The text as written (trimmed), for display.
    pub(super) source: Box<str>,
}

/// The day-of-month field starts with `*` or `?` (cronie's `DOM_STAR`).
pub(super) const DOM_STAR: u8 = 1;
/// The day-of-week field starts with `*` or `?` (cronie's `DOW_STAR`).
pub(super) const DOW_STAR: u8 = 2;
/// Neither the minute nor the hour field starts with `*` or `?`: a fixed local time of day,
/// which gets cronie's DST treatment (see the module doc of `rule`).
pub(super) const FIXED_TIME: u8 = 4;

/// What only some rules need, kept out of line so that the common rule stays small.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Extras {
    /// Day-of-month `L-k`: bit `k` (so `L` is bit 0).
    pub(super) last_minus: u32,
    /// Day-of-month `LW`: the last weekday (Monday-Friday) of the month.
    pub(super) last_weekday: bool,
    /// Day-of-month `nW`: bit `n`, the weekday nearest to day `n` within the month.
    pub(super) nearest_weekday: u32,
    /// Day-of-week `wL`: bit `w`, the last such weekday of the month.
    pub(super) last_of: u8,
    /// Day-of-week `w#k`: bit `7 * (k - 1) + w`, the k-th such weekday of the month.
    pub(super) nth: u64,
    /// The year field, bit `y - 1970`, when it is restricted.
    pub(super) years: Option<[u64; 3]>,
}

/// The smallest and largest year a year field may name.
pub(super) const YEAR_MIN: u32 = 1970;
/// See [`YEAR_MIN`].
pub(super) const YEAR_MAX: u32 = 2099;

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronExpr({:?})", self.source)
    }
}

impl CronExpr {
    /// The rule as written (trimmed), or the macro it was written as.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the rule is "fixed-time" in cronie's sense: see [`FIXED_TIME`].
    pub(super) fn is_fixed_time(&self) -> bool {
        self.flags & FIXED_TIME != 0
    }

    /// Parses 5, 6 or 7 whitespace-separated fields (already split). `source` is kept for
    /// display. Errors say which field, which element and what is wrong.
    pub(super) fn parse(source: &str, fields: &[&str]) -> Result<CronExpr, String> {
        let (second, rest) = match fields.len() {
            5 => ("0", fields),
            6 | 7 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "{n} fields; expected 5 (min hour day month weekday), 6 (seconds first) or 7 (seconds first, year last)"
                ));
            }
        };
        let (minute, hour, dom, month, dow) = (rest[0], rest[1], rest[2], rest[3], rest[4]);
        let year = rest.get(5).copied();

        let mut extras = Extras::default();
        let seconds = parse_field(&SECOND, second, &mut extras)?.low();
        let minutes = parse_field(&MINUTE, minute, &mut extras)?.low();
        let hours = parse_field(&HOUR, hour, &mut extras)?.low() as u32;
        let days = parse_field(&DAY_OF_MONTH, dom, &mut extras)?.low() as u32;
        let months = parse_field(&MONTH, month, &mut extras)?.low() as u16;
        let dow_bits = parse_field(&DAY_OF_WEEK, dow, &mut extras)?.low();
        // 7 is another name for Sunday.
        let weekdays = ((dow_bits | dow_bits >> 7) & 0x7f) as u8;
        if let Some(year) = year {
            if !is_star(year) {
                extras.years = Some(parse_field(&YEAR, year, &mut extras)?.0);
            }
        }

        let mut flags = 0;
        if is_star(dom) {
            flags |= DOM_STAR;
        }
        if is_star(dow) {
            flags |= DOW_STAR;
        }
        if !is_star(minute) && !is_star(hour) {
            flags |= FIXED_TIME;
        }
        Ok(CronExpr {
            seconds,
            minutes,
            hours,
            days,
            months,
            weekdays,
            flags,
            extras: (extras != Extras::default()).then(|| Box::new(extras)),
            source: source.into(),
        })
    }
}

/// cronie's test: a field whose text starts with `*` (here also `?`) is unrestricted, even
/// `*/2`. It decides the day-of-month/day-of-week OR rule and the fixed-time DST rule.
fn is_star(field: &str) -> bool {
    field.starts_with('*') || field.starts_with('?')
}

/// One field's name, bounds and value names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, ... (upper case).
    names: &'static [&'static str],
    /// Bit `v - base` stands for value `v`.
    base: u32,
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    base: 0,
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    base: 0,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    base: 0,
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    base: 0,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    base: 0,
};
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    base: 0,
};
const YEAR: Field = Field {
    name: "year",
    min: YEAR_MIN,
    max: YEAR_MAX,
    names: &[],
    base: YEAR_MIN,
};

/// A set of up to 192 values, bit `v - base`.
#[derive(Default)]
struct Bits([u64; 3]);

impl Bits {
    fn set(&mut self, i: u32) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    fn low(&self) -> u64 {
        self.0[0]
    }
    fn is_empty(&self) -> bool {
        self.0 == [0; 3]
    }
}

/// Parses one field: a comma-separated list of `*`, `?`, values, ranges, steps and (in the
/// day fields) the Quartz extras, which go to `extras`.
fn parse_field(field: &Field, text: &str, extras: &mut Extras) -> Result<Bits, String> {
    let err = |msg: String| format!("{} field {text:?}: {msg}", field.name);
    let mut bits = Bits::default();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(err("an empty list element".into()));
        }
        if special(field, item, extras).map_err(err)? {
            continue;
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| err(format!("step {step:?} is not a number")))?;
                if step == 0 || step > field.max - field.min + 1 {
                    return Err(err(format!(
                        "step {step} is not between 1 and {}",
                        field.max - field.min + 1
                    )));
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let lo = value(field, a).map_err(err)?;
            let mut hi = value(field, b).map_err(err)?;
            // `SAT-SUN` means Saturday and Sunday: SUN at the top of a range is 7.
            if field.name == DAY_OF_WEEK.name && b.eq_ignore_ascii_case("SUN") {
                hi = 7;
            }
            if lo > hi {
                return Err(err(format!(
                    "range {a}-{b} goes backwards (write it as two ranges)"
                )));
            }
            (lo, hi)
        } else {
            let v = value(field, range).map_err(err)?;
            // `a/n` means from a to the end of the field, every n (cronie, Quartz); in
            // day-of-week the end is Saturday (6), as croniter has it: `1/2` is MON,WED,FRI.
            let end = if field.name == DAY_OF_WEEK.name {
                6
            } else {
                field.max
            };
            (v, if step.is_some() { end } else { v })
        };
        let mut v = lo;
        while v <= hi {
            bits.set(v - field.base);
            v += step.unwrap_or(1);
        }
    }
    if bits.is_empty() && !has_extras_for(field, extras) {
        // Only reachable for a field made of specials that set nothing, kept as a guard.
        return Err(err("matches nothing".into()));
    }
    Ok(bits)
}

fn has_extras_for(field: &Field, extras: &Extras) -> bool {
    if field.name == DAY_OF_MONTH.name {
        extras.last_minus != 0 || extras.last_weekday || extras.nearest_weekday != 0
    } else if field.name == DAY_OF_WEEK.name {
        extras.last_of != 0 || extras.nth != 0
    } else {
        false
    }
}

/// The Quartz extras: `L`, `L-3`, `LW`, `15W` in day-of-month; `5L`, `5#3` in day-of-week.
/// Returns whether `item` was one of them.
fn special(field: &Field, item: &str, extras: &mut Extras) -> Result<bool, String> {
    if field.name == DAY_OF_MONTH.name {
        if item.eq_ignore_ascii_case("L") {
            extras.last_minus |= 1;
        } else if item.eq_ignore_ascii_case("LW") {
            extras.last_weekday = true;
        } else if let Some(k) = item.strip_prefix("L-").or_else(|| item.strip_prefix("l-")) {
            let k: u32 = k
                .parse()
                .ok()
                .filter(|k| *k <= 30)
                .ok_or_else(|| format!("{item:?}: L-n needs n between 0 and 30"))?;
            extras.last_minus |= 1 << k;
        } else if let Some(n) = item.strip_suffix(['W', 'w']) {
            let n = value(field, n)?;
            extras.nearest_weekday |= 1 << n;
        } else {
            return Ok(false);
        }
        return Ok(true);
    }
    if field.name == DAY_OF_WEEK.name {
        if let Some((w, k)) = item.split_once('#') {
            let w = value(field, w)? % 7;
            let k: u32 = k
                .parse()
                .ok()
                .filter(|k| (1..=5).contains(k))
                .ok_or_else(|| format!("{item:?}: the week number after # must be 1-5"))?;
            extras.nth |= 1 << (7 * (k - 1) + w);
            return Ok(true);
        }
        if let Some(w) = item.strip_suffix(['L', 'l']) {
            if w.is_empty() {
                return Err(
                    "L in day-of-week needs a weekday before it, e.g. 5L (the last Friday)".into(),
                );
            }
            let w = value(field, w)? % 7;
            extras.last_of |= 1 << w;
            return Ok(true);
        }
    }
    Ok(false)
}

/// A number or (in month and day-of-week) a name, within the field's bounds.
fn value(field: &Field, token: &str) -> Result<u32, String> {
    if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(token))
    {
        return Ok(field.min + i as u32);
    }
    let all_digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    let v: u32 = match token.parse() {
        Ok(v) if all_digits => v,
        _ if all_digits => u32::MAX, // too long to parse: out of range below
        _ => {
            return Err(match field.names.first() {
                Some(first) => format!(
                    "{token:?} is not a number or a name ({first}-{})",
                    field.names[field.names.len() - 1]
                ),
                None => format!("{token:?} is not a number"),
            });
        }
    };
    if v < field.min || v > field.max {
        return Err(format!(
            "{token} is out of range {}-{}",
            field.min, field.max
        ));
    }
    Ok(v)
}
