//! UTC offset tables: for each time zone, the instants where its offset changes.
//!
//! chrono-tz answers "what is the offset at instant t" with a binary search and some
//! conversions per call, and cannot say when the offset next changes, which is what the DST
//! rule needs. So the first time a zone is used, its changes between 1900 and 2101 are found
//! once by probing chrono-tz every 6 hours and bisecting each change to the second, and kept for
//! the life of the process (a few KiB per zone used). Offsets before 1900 are taken to be the
//! 1900 one; chrono-tz itself holds no changes after 2100. Two changes less than 6 hours apart
//! would be seen as one: probing every 30 minutes instead finds exactly as many changes in
//! every zone of chrono-tz 0.10.4's database (checked once, a 70-second run, not kept as a test).

use std::sync::OnceLock;

use chrono::{DateTime, Offset, TimeZone};
use chrono_tz::{TZ_VARIANTS, Tz};

/// A zone's offsets: a run of spans, each with one offset from UTC.
#[derive(Debug)]
pub(super) struct Zone {
    /// The offset before the first change, seconds east of UTC.
    first: i32,
    /// The changes, in time order.
    changes: Box<[Change]>,
}

#[derive(Debug, Clone, Copy)]
struct Change {
    /// The instant (Unix seconds) the new offset starts.
    at: i64,
    /// The offset from then on.
    offset: i32,
}

/// A span of instants `[start, end)` with one offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    /// Seconds east of UTC: local = UTC + offset.
    pub(super) offset: i64,
    /// The first instant (Unix seconds); `i64::MIN` for the first span.
    pub(super) start: i64,
    /// The first instant after the span; `i64::MAX` for the last span.
    pub(super) end: i64,
    /// The offset of the span before (equal to `offset` for the first span).
    pub(super) before: i64,
}

const START: i64 = -2_208_988_800; // 1900-01-01T00:00:00Z
const END: i64 = 4_133_980_800; // 2101-01-01T00:00:00Z
const STEP: i64 = 6 * 3600;

impl Zone {
    /// The table of `tz`, built on first use.
    pub(super) fn of(tz: Tz) -> &'static Zone {
        static ZONES: OnceLock<Box<[OnceLock<Zone>]>> = OnceLock::new();
        let zones = ZONES.get_or_init(|| TZ_VARIANTS.iter().map(|_| OnceLock::new()).collect());
        zones[tz as usize].get_or_init(|| Zone::build(tz))
    }

    fn build(tz: Tz) -> Zone {
        let offset_at = |t: i64| {
            let utc = DateTime::from_timestamp(t, 0).expect("1900-2101 is in chrono's range");
            tz.offset_from_utc_datetime(&utc.naive_utc())
                .fix()
                .local_minus_utc()
        };
        let first = offset_at(START);
        let mut changes = Vec::new();
        let (mut known, mut offset) = (START, first);
        let mut probe = START + STEP;
        while probe <= END {
            if offset_at(probe) == offset {
                (known, probe) = (probe, probe + STEP);
                continue;
            }
            // offset_at(known) == offset != offset_at(probe): bisect to the first changed second.
            let (mut lo, mut hi) = (known, probe);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if offset_at(mid) == offset {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            offset = offset_at(hi);
            changes.push(Change { at: hi, offset });
            // Probe again from the change: there may be another before `probe`.
            known = hi;
        }
        Zone {
            first,
            changes: changes.into_boxed_slice(),
        }
    }

    /// The offset from `t` on, if it never changes again and last changed over a day before `t`
    /// (so no repeated local times linger): UTC, fixed-offset zones, zones that gave up DST.
    pub(super) fn fixed_from(&self, t: i64) -> Option<i64> {
        match self.changes.last() {
            None => Some(i64::from(self.first)),
            Some(last) if last.at.saturating_add(86_400) <= t => Some(i64::from(last.offset)),
            Some(_) => None,
        }
    }

    /// The index of the span that contains instant `t`.
    pub(super) fn index_of(&self, t: i64) -> usize {
        self.changes.partition_point(|c| c.at <= t)
    }

    /// The span at `index` (0 = before the first change); spans past the last are the last.
    pub(super) fn span(&self, index: usize) -> Span {
        let index = index.min(self.changes.len());
        let offset_of = |i: usize| match i {
            0 => self.first,
            i => self.changes[i - 1].offset,
        };
        Span {
            offset: i64::from(offset_of(index)),
            start: index
                .checked_sub(1)
                .map_or(i64::MIN, |i| self.changes[i].at),
            end: self.changes.get(index).map_or(i64::MAX, |c| c.at),
            before: i64::from(offset_of(index.saturating_sub(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_york_changes_match_chrono_tz() {
        let zone = Zone::of(chrono_tz::America::New_York);
        // 2026-03-08T07:00:00Z: EST (-5 h) becomes EDT (-4 h).
        let i = zone.index_of(1_772_953_200);
        let span = zone.span(i);
        assert_eq!(span.start, 1_772_953_200);
        assert_eq!((span.before, span.offset), (-18_000, -14_400));
        // 2026-11-01T06:00:00Z: back to EST.
        assert_eq!(span.end, 1_793_512_800);
        assert_eq!(zone.span(i + 1).offset, -18_000);
        assert_eq!(Zone::of(Tz::UTC).fixed_from(0), Some(0));
        assert_eq!(zone.fixed_from(1_772_953_200), None);
        // Asia/Shanghai has kept +08:00 since 1991.
        let shanghai = Zone::of(chrono_tz::Asia::Shanghai);
        assert_eq!(shanghai.fixed_from(1_772_953_200), Some(28_800));
        assert_eq!(shanghai.fixed_from(0), None);
        assert_eq!(Zone::of(Tz::UTC).span(0).end, i64::MAX);
    }

    #[test]
    fn offsets_match_chrono_tz_at_random_instants() {
        // Zones with odd rules: 30-minute and 2-hour DST, negative DST (Dublin), a skipped day
        // (Apia, 2011), Ramadan breaks (Casablanca), DST given up (Sao Paulo, Tehran).
        let zones = [
            "America/New_York",
            "Europe/Berlin",
            "Australia/Lord_Howe",
            "Antarctica/Troll",
            "Europe/Dublin",
            "Pacific/Apia",
            "Africa/Casablanca",
            "America/Sao_Paulo",
            "Asia/Tehran",
            "Asia/Shanghai",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for name in zones {
            let tz: Tz = name.parse().unwrap();
            let zone = Zone::of(tz);
            for _ in 0..3000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = START + (x % (END - START) as u64) as i64;
                let utc = DateTime::from_timestamp(t, 0).unwrap().naive_utc();
                let expected = tz.offset_from_utc_datetime(&utc).fix().local_minus_utc();
                let span = zone.span(zone.index_of(t));
                assert_eq!(span.offset, i64::from(expected), "{name} at {utc}");
                assert!(span.start <= t && t < span.end, "{name} at {utc}");
            }
        }
    }
}
