//! Mapping between instants and wall-clock time in a zone, with the DST rules of DESIGN.md §3.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// Wall-clock time in `tz` at instant `t`.
pub(super) fn wall_clock(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(&tz).naive_local()
}

/// The instant at which wall-clock time `local` happens in `tz`.
///
/// A time that occurs twice (fall-back) resolves to its first occurrence; a time that does not
/// occur (spring-forward gap) resolves to the end of the gap, so a window scheduled inside the
/// gap opens late instead of vanishing. The mapping is non-decreasing in `local`, which is what
/// lets callers walk wall-clock firings in order.
pub(super) fn resolve(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.to_utc(),
        LocalResult::Ambiguous(first, second) => first.min(second).to_utc(),
        LocalResult::None => end_of_gap(tz, local),
    }
}

fn end_of_gap(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let exists = |t: NaiveDateTime| tz.from_local_datetime(&t).earliest();
    // Step out of the gap coarsely (gaps are an hour or so; a date-line change skips a day),
    // then bisect to the second: offsets, and so gap ends, are whole seconds.
    let coarse = TimeDelta::minutes(15);
    let mut missing = local;
    let mut present = None;
    for _ in 0..4 * 24 * 3 {
        let Some(next) = missing.checked_add_signed(coarse) else {
            break;
        };
        if exists(next).is_some() {
            present = Some(next);
            break;
        }
        missing = next;
    }
    let Some(mut present) = present else {
        // No tz database has such a gap; fall back to the offset in force around `local`.
        let offset = tz.offset_from_utc_datetime(&local).fix();
        return local.and_utc() - TimeDelta::seconds(offset.local_minus_utc().into());
    };
    while present - missing > TimeDelta::seconds(1) {
        let mid = missing + TimeDelta::seconds((present - missing).num_seconds() / 2);
        if exists(mid).is_some() {
            present = mid;
        } else {
            missing = mid;
        }
    }
    exists(present).map_or_else(|| present.and_utc(), |t| t.to_utc())
}
