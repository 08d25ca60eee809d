//! The one part of `summary.md` that depends on when it was written: how
//! far off a window's opening is. It is relative to the pass that wrote the
//! file, and left out when deciding whether the file changed, so time
//! passing alone never makes a status commit (invariant 5).

/// `in 1d 14h`, `in 3h 20m`, `in 5m`, `now`: two units at most.
pub fn relative(d: chrono::Duration) -> String {
    let mins = d.num_minutes();
    if mins <= 0 {
        return "now".to_string();
    }
    let (days, hours, mins) = (mins / 1440, mins / 60 % 24, mins % 60);
    match (days, hours) {
        (0, 0) => format!("in {mins}m"),
        (0, h) if mins == 0 => format!("in {h}h"),
        (0, h) => format!("in {h}h {mins}m"),
        (d, 0) => format!("in {d}d"),
        (d, h) => format!("in {d}d {h}h"),
    }
}

/// Whether two `summary.md` say the same, relative times aside.
pub fn same_summary(a: &str, b: &str) -> bool {
    /// Where the next relative time (`in ...` after `(` or `, `) starts:
    /// one scan, not one per kind (two `find`s from the start of what is
    /// left made a 10,000-row table quadratic).
    fn next_relative(s: &str) -> Option<usize> {
        let mut from = 0;
        while let Some(i) = s[from..].find("in ") {
            let at = from + i;
            if s[..at].ends_with('(') || s[..at].ends_with(", ") {
                return Some(at);
            }
            from = at + 3;
        }
        None
    }
    fn stable(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = next_relative(rest) {
            out.push_str(&rest[..start]);
            match rest[start..].find(')') {
                Some(end) => rest = &rest[start + end..],
                None => {
                    rest = &rest[start..];
                    break;
                }
            }
        }
        out.push_str(rest);
        out.replace("(now)", "()").replace(", now)", ", )")
    }
    a == b || stable(a) == stable(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let rows = [
            (0, "now"),
            (-60, "now"),
            (5 * 60, "in 5m"),
            (3 * 3600, "in 3h"),
            (3 * 3600 + 20 * 60, "in 3h 20m"),
            (86400, "in 1d"),
            (86400 + 14 * 3600 + 59 * 60, "in 1d 14h"),
        ];
        for (secs, want) in rows {
            assert_eq!(relative(chrono::Duration::seconds(secs)), want, "{secs}s");
        }
    }

    #[test]
    fn summaries_differing_only_in_relative_times_are_the_same() {
        let a = "| a | staged | x | w: opens Sat 28 Nov 02:00 CET (01:00 UTC, in 1d 14h) | WindowClosed |";
        let b = "| a | staged | x | w: opens Sat 28 Nov 02:00 CET (01:00 UTC, in 1d 9h) | WindowClosed |";
        let c = "| a | staged | x | w: opens Sat 05 Dec 02:00 CET (01:00 UTC, in 8d 9h) | WindowClosed |";
        let d = "| a | staged | x | w: opens Sat 28 Nov 01:00 UTC (in 3h) | WindowClosed |";
        let e = "| a | staged | x | w: opens Sat 28 Nov 01:00 UTC (now) | WindowClosed |";
        assert!(same_summary(a, b));
        assert!(!same_summary(a, c), "another opening is a change");
        assert!(same_summary(d, e));
        assert!(!same_summary(a, d));
        // Both kinds in one table, the bare one first.
        let f = format!("{d}\n{a}");
        let g = format!("{e}\n{b}");
        assert!(same_summary(&f, &g));
        assert!(!same_summary(&f, &format!("{e}\n{c}")));
    }
}
