use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Tz;

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().expect("test instant is RFC 3339")
}

fn zone(name: &str) -> Tz {
    parse_timezone(name).expect("test zone exists")
}

fn schedule(expr: &str) -> Schedule {
    Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

fn firings(expr: &str, tz: Tz, from: &str, n: usize) -> Vec<DateTime<Utc>> {
    schedule(expr).firings_from(utc(from), tz).take(n).collect()
}

fn window(expr: &str, duration: Duration, tz: &str) -> Window {
    Window {
        name: "w".into(),
        schedule: schedule(expr),
        duration,
        tz: zone(tz),
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Weekdays of the first `n` firings in UTC from Thursday 2026-01-01, all at `hh:mm`.
fn weekdays(expr: &str, n: usize, hh: u32, mm: u32) -> HashSet<Weekday> {
    let fs = firings(expr, Tz::UTC, "2026-01-01T00:00:00Z", n);
    assert_eq!(fs.len(), n, "{expr}");
    for f in &fs {
        assert_eq!(
            (f.hour(), f.minute(), f.second()),
            (hh, mm, 0),
            "{expr}: {f}"
        );
    }
    fs.iter().map(|f| f.weekday()).collect()
}

mod translation {
    use super::*;
    use Weekday::*;

    #[test]
    fn day_of_week_numbers_and_names_mean_what_unix_means() {
        let table: &[(&str, &[Weekday])] = &[
            ("0 2 * * SAT", &[Sat]),
            ("0 2 * * sat", &[Sat]),
            ("0 2 * * 6", &[Sat]),
            ("0 2 * * 0", &[Sun]),
            ("0 2 * * 7", &[Sun]),
            ("0 2 * * 5-7", &[Fri, Sat, Sun]),
            ("0 2 * * FRI-SUN", &[Fri, Sat, Sun]),
            ("0 2 * * 1-5", &[Mon, Tue, Wed, Thu, Fri]),
            ("0 2 * * Mon-Fri", &[Mon, Tue, Wed, Thu, Fri]),
            ("0 2 * * */2", &[Sun, Tue, Thu, Sat]),
            ("0 2 * * 1-5/2", &[Mon, Wed, Fri]),
            ("0 2 * * 1/2", &[Mon, Wed, Fri]),
            ("0 2 * * 0,6", &[Sat, Sun]),
            ("0 2 * * 6,7,SUN", &[Sat, Sun]),
            ("0 2 * * ?", &[Mon, Tue, Wed, Thu, Fri, Sat, Sun]),
        ];
        for (expr, days) in table {
            let expected: HashSet<Weekday> = days.iter().copied().collect();
            assert_eq!(weekdays(expr, 21, 2, 0), expected, "{expr}");
        }
    }

    #[test]
    fn minute_and_hour_steps() {
        let fs = firings("*/15 * * * *", Tz::UTC, "2026-05-05T10:07:00Z", 8);
        assert_eq!(fs[0], utc("2026-05-05T10:15:00Z"));
        assert!(fs.windows(2).all(|w| w[1] - w[0] == TimeDelta::minutes(15)));
        let fs = firings("5 */6 * * *", Tz::UTC, "2026-05-05T00:00:00Z", 4);
        let hours: Vec<u32> = fs.iter().map(|f| f.hour()).collect();
        assert_eq!(hours, [0, 6, 12, 18]);
        assert!(fs.iter().all(|f| f.minute() == 5));
        let fs = firings("0 2 1/10 * *", Tz::UTC, "2026-01-01T00:00:00Z", 4);
        let days: Vec<u32> = fs.iter().map(|f| f.day()).collect();
        assert_eq!(days, [1, 11, 21, 31]);
    }

    #[test]
    fn month_names() {
        let fs = firings("30 4 1 JAN,jul *", Tz::UTC, "2026-02-01T00:00:00Z", 3);
        assert_eq!(
            fs,
            [
                utc("2026-07-01T04:30:00Z"),
                utc("2027-01-01T04:30:00Z"),
                utc("2027-07-01T04:30:00Z")
            ]
        );
        let fs = firings("0 0 15 Mar-May *", Tz::UTC, "2026-01-01T00:00:00Z", 4);
        let months: Vec<u32> = fs.iter().map(|f| f.month()).collect();
        assert_eq!(months, [3, 4, 5, 3]);
    }

    #[test]
    fn macros() {
        let from = "2026-03-15T10:20:00Z";
        let first = |expr: &str| firings(expr, Tz::UTC, from, 2);
        let yearly = [utc("2027-01-01T00:00:00Z"), utc("2028-01-01T00:00:00Z")];
        assert_eq!(first("@yearly"), yearly);
        assert_eq!(first("@annually"), yearly);
        assert_eq!(
            first("@monthly"),
            [utc("2026-04-01T00:00:00Z"), utc("2026-05-01T00:00:00Z")]
        );
        // 2026-03-15 is a Sunday: @weekly is Sunday midnight.
        assert_eq!(
            first("@weekly"),
            [utc("2026-03-22T00:00:00Z"), utc("2026-03-29T00:00:00Z")]
        );
        let daily = [utc("2026-03-16T00:00:00Z"), utc("2026-03-17T00:00:00Z")];
        assert_eq!(first("@daily"), daily);
        assert_eq!(first("@midnight"), daily);
        assert_eq!(
            first("@hourly"),
            [utc("2026-03-15T11:00:00Z"), utc("2026-03-15T12:00:00Z")]
        );
        assert_eq!(schedule("@Daily").expression(), "@Daily");
    }

    #[test]
    fn six_field_form_keeps_the_crate_numbering() {
        // The crate's 6 is Friday: passed through as documented, with a warning saying so.
        let s = schedule("0 0 2 * * 6");
        assert!(s.warnings()[0].contains("1 = Sunday"), "{:?}", s.warnings());
        let fs: Vec<_> = s
            .firings_from(utc("2026-01-01T00:00:00Z"), Tz::UTC)
            .take(3)
            .collect();
        assert!(fs.iter().all(|f| f.weekday() == Weekday::Fri));
        let s = schedule("30 15 10 * * SAT 2026");
        assert!(s.warnings().is_empty());
        let fs: Vec<_> = s
            .firings_from(utc("2026-12-20T00:00:00Z"), Tz::UTC)
            .collect();
        assert_eq!(fs, [utc("2026-12-26T10:15:30Z")]);
    }

    #[test]
    fn expression_is_kept_as_written() {
        let s = schedule("  0 2 * * SAT ");
        assert_eq!(s.expression(), "  0 2 * * SAT ");
        assert_eq!(s.to_string(), "  0 2 * * SAT ");
        assert!(s.warnings().is_empty());
    }
}

mod day_rule {
    use super::*;

    #[test]
    fn restricted_day_of_month_and_week_match_either() {
        let s = schedule("0 2 1-7 * MON");
        let warning = &s.warnings()[0];
        assert!(warning.contains("\"1-7\"") && warning.contains("\"MON\""));
        assert!(warning.contains("either"), "{warning}");
        let fs: Vec<_> = s
            .firings_from(utc("2026-09-01T00:00:00Z"), Tz::UTC)
            .take_while(|f| f.month() == 9)
            .collect();
        let days: Vec<u32> = fs.iter().map(|f| f.day()).collect();
        // Sep 2026: 1st-7th, plus the Mondays 14, 21, 28 (the 7th is also a Monday, fired once).
        assert_eq!(days, [1, 2, 3, 4, 5, 6, 7, 14, 21, 28]);
    }

    #[test]
    fn applies_to_the_six_field_form() {
        let s = schedule("0 0 2 15 * MON");
        assert!(s.warnings()[0].contains("either"));
        let days: Vec<u32> = s
            .firings_from(utc("2026-09-01T00:00:00Z"), Tz::UTC)
            .take_while(|f| f.month() == 9)
            .map(|f| f.day())
            .collect();
        assert_eq!(days, [7, 14, 15, 21, 28]);
    }

    #[test]
    fn no_warning_when_only_one_is_restricted() {
        for expr in [
            "0 2 1-7 * *",
            "0 2 * * MON",
            "0 2 ? * MON",
            "0 0 2 1-7 * ?",
            "0 2 1 * */1",
        ] {
            assert!(schedule(expr).warnings().is_empty(), "{expr}");
        }
        // As in Kubernetes and Argo CD, a step other than 1 restricts the field.
        assert!(schedule("0 2 1 * */2").warnings()[0].contains("either"));
        let days: Vec<u32> = firings("0 2 1-7 * *", Tz::UTC, "2026-09-01T00:00:00Z", 8)
            .iter()
            .map(|f| f.day())
            .collect();
        assert_eq!(days, [1, 2, 3, 4, 5, 6, 7, 1]);
    }
}

mod dst {
    use super::*;

    fn on_day(expr: &str, tz: &str, day: &str) -> Vec<DateTime<Utc>> {
        let tz = zone(tz);
        let date: NaiveDate = day.parse().expect("test date");
        let start = local::resolve(tz, date.and_hms_opt(0, 0, 0).expect("midnight"));
        let end = local::resolve(
            tz,
            (date + TimeDelta::days(1))
                .and_hms_opt(0, 0, 0)
                .expect("midnight"),
        );
        schedule(expr)
            .firings_from(start, tz)
            .take_while(|&f| f < end)
            .collect()
    }

    #[test]
    fn spring_forward_gap_fires_at_the_end_of_the_gap() {
        assert_eq!(
            on_day("30 2 * * *", "Europe/Berlin", "2026-03-29"),
            [utc("2026-03-29T01:00:00Z")]
        );
        assert_eq!(
            on_day("30 2 * * *", "America/New_York", "2026-03-08"),
            [utc("2026-03-08T07:00:00Z")]
        );
        // A weekly window in the gap does not vanish for a week.
        let fs = firings(
            "0 2 * * SUN",
            zone("Europe/Berlin"),
            "2026-03-22T12:00:00Z",
            2,
        );
        assert_eq!(
            fs,
            [utc("2026-03-29T01:00:00Z"), utc("2026-04-05T00:00:00Z")]
        );
        // Lord Howe moves by 30 minutes: 02:00 -> 02:30 on 2026-10-04.
        let lh = zone("Australia/Lord_Howe");
        let expected = lh
            .with_ymd_and_hms(2026, 10, 4, 2, 30, 0)
            .single()
            .expect("exists");
        assert_eq!(
            on_day("15 2 * * *", "Australia/Lord_Howe", "2026-10-04"),
            [expected]
        );
    }

    #[test]
    fn fall_back_fires_once_at_the_first_occurrence() {
        assert_eq!(
            on_day("30 1 * * *", "America/New_York", "2026-11-01"),
            [utc("2026-11-01T05:30:00Z")]
        );
        assert_eq!(
            on_day("30 2 * * *", "Europe/Berlin", "2026-10-25"),
            [utc("2026-10-25T00:30:00Z")]
        );
    }

    #[test]
    fn hourly_across_transitions_is_strictly_increasing() {
        for (tz, day, count) in [
            ("Europe/Berlin", "2026-03-29", 23),
            ("Europe/Berlin", "2026-10-25", 24),
            ("America/New_York", "2026-03-08", 23),
            ("America/New_York", "2026-11-01", 24),
        ] {
            let fs = on_day("0 * * * *", tz, day);
            assert_eq!(fs.len(), count, "{tz} {day}: {fs:?}");
            assert!(fs.windows(2).all(|w| w[0] < w[1]), "{tz} {day}");
        }
        let fs = on_day("*/20 * * * *", "Europe/Berlin", "2026-10-25");
        assert!(fs.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(fs.len(), 72);
    }

    #[test]
    fn from_is_inclusive_inside_a_fold() {
        // 01:30 EST (second occurrence) is 06:30Z: the 01:45 firing already happened at 05:45Z.
        let fs = firings(
            "45 1 * * *",
            zone("America/New_York"),
            "2026-11-01T06:30:00Z",
            1,
        );
        assert_eq!(fs, [utc("2026-11-02T06:45:00Z")]);
        let fs = firings(
            "45 1 * * *",
            zone("America/New_York"),
            "2026-11-01T05:45:00Z",
            1,
        );
        assert_eq!(fs, [utc("2026-11-01T05:45:00Z")]);
    }
}

mod windows {
    use super::*;

    #[test]
    fn weekend_night_in_berlin() {
        let w = window("0 2 * * SAT", 3 * HOUR, "Europe/Berlin");
        let opens = utc("2026-11-21T01:00:00Z");
        let closes = utc("2026-11-21T04:00:00Z");
        let next_week = utc("2026-11-28T01:00:00Z");

        let before = w.state_at(opens - TimeDelta::seconds(1));
        assert_eq!(
            before,
            WindowState {
                open: false,
                opened_at: None,
                closes_at: None,
                next_open: Some(opens)
            }
        );
        let open = WindowState {
            open: true,
            opened_at: Some(opens),
            closes_at: Some(closes),
            next_open: Some(next_week),
        };
        assert_eq!(w.state_at(opens), open);
        assert_eq!(w.state_at(utc("2026-11-21T02:30:00Z")), open);
        assert_eq!(w.state_at(closes - TimeDelta::seconds(1)), open);
        assert_eq!(w.state_at(closes - TimeDelta::nanoseconds(1)), open);
        let after = w.state_at(closes);
        assert!(!after.open);
        assert_eq!(after.next_open, Some(next_week));
        assert!(!w.is_open(utc("2026-11-20T01:30:00Z")));
        assert!(w.is_open(utc("2026-11-28T03:59:59Z")));
        assert_eq!(
            w.next_openings(opens, 3),
            [
                next_week,
                utc("2026-12-05T01:00:00Z"),
                utc("2026-12-12T01:00:00Z")
            ]
        );
        assert_eq!(w.next_openings(opens - TimeDelta::seconds(1), 1), [opens]);
    }

    #[test]
    fn state_follows_the_clock() {
        let w = Window::from_spec("weekend-night", "0 2 * * SAT", "3h", "Europe/Berlin")
            .expect("valid spec");
        let clock = FixedClock::new(utc("2026-11-21T00:30:00Z"));
        assert!(!w.state(&clock).open);
        clock.advance(Duration::from_secs(30 * 60));
        assert!(w.state(&clock).open);
        clock.advance(3 * HOUR);
        assert!(!w.state(&clock).open);
        clock.set(utc("2026-11-28T01:00:00Z"));
        assert_eq!(clock.now(), utc("2026-11-28T01:00:00Z"));
        assert!(w.state(&clock).open);
        assert!(SystemClock.now() > utc("2020-01-01T00:00:00Z"));
    }

    #[test]
    fn overlapping_firings_merge() {
        // Mon 00:00 + 36h and Tue 00:00 + 36h cover Mon 00:00 .. Wed 12:00 without a break.
        let w = window("0 0 * * MON,TUE", 36 * HOUR, "UTC");
        let state = w.state_at(utc("2026-11-24T06:00:00Z"));
        assert_eq!(
            state,
            WindowState {
                open: true,
                opened_at: Some(utc("2026-11-23T00:00:00Z")),
                closes_at: Some(utc("2026-11-25T12:00:00Z")),
                next_open: Some(utc("2026-11-30T00:00:00Z")),
            }
        );
        let later = w.state_at(utc("2026-11-24T13:00:00Z"));
        assert_eq!(later.opened_at, Some(utc("2026-11-24T00:00:00Z")));
        assert_eq!(later.closes_at, Some(utc("2026-11-25T12:00:00Z")));
        // Back-to-back firings count as one opening.
        let w = window("0 0,12 * * MON", 12 * HOUR, "UTC");
        let state = w.state_at(utc("2026-11-23T01:00:00Z"));
        assert_eq!(state.closes_at, Some(utc("2026-11-24T00:00:00Z")));
    }

    #[test]
    fn long_and_always_open_windows_are_bounded() {
        let w = window("0 0 1 * *", 14 * 24 * HOUR, "Europe/Berlin");
        let state = w.state_at(utc("2026-11-10T00:00:00Z"));
        assert_eq!(state.opened_at, Some(utc("2026-10-31T23:00:00Z")));
        assert_eq!(state.closes_at, Some(utc("2026-11-14T23:00:00Z")));
        let w = window("* * * * *", HOUR, "UTC");
        let t = utc("2026-11-10T00:00:30Z");
        let state = w.state_at(t);
        assert_eq!(state.opened_at, Some(utc("2026-11-09T23:01:00Z")));
        assert!(state.closes_at.is_some_and(|c| c > t + TimeDelta::days(2)));
        assert_eq!(state.next_open, Some(utc("2026-11-10T00:01:00Z")));
    }

    #[test]
    fn a_schedule_that_never_fires_ends() {
        let s = schedule("0 0 30 2 *");
        assert!(
            s.warnings()[0].contains("never fires"),
            "{:?}",
            s.warnings()
        );
        assert_eq!(
            s.firings_from(utc("2026-01-01T00:00:00Z"), Tz::UTC).count(),
            0
        );
        let w = window("0 0 30 2 *", HOUR, "Europe/Berlin");
        let state = w.state_at(utc("2026-01-01T00:00:00Z"));
        assert!(!state.open);
        assert_eq!(state.next_open, None);
        assert!(w.next_openings(utc("2026-01-01T00:00:00Z"), 3).is_empty());
        // Past the crate's last year, and at the ends of time: nothing, and no panic.
        let w = window("0 2 * * *", HOUR, "Pacific/Chatham");
        for t in [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            utc("2101-01-01T00:00:00Z"),
        ] {
            let state = w.state_at(t);
            assert!(!state.open);
        }
    }

    #[test]
    fn leap_day_fires_every_four_years() {
        let fs = firings("0 0 29 2 *", Tz::UTC, "2025-01-01T00:00:00Z", 2);
        assert_eq!(
            fs,
            [utc("2028-02-29T00:00:00Z"), utc("2032-02-29T00:00:00Z")]
        );
    }

    #[test]
    fn zero_duration_never_opens() {
        let w = window("0 2 * * *", Duration::ZERO, "UTC");
        assert!(!w.is_open(utc("2026-11-21T02:00:00Z")));
    }
}

mod errors {
    use super::*;

    fn error(expr: &str) -> String {
        match Schedule::parse(expr) {
            Ok(s) => panic!("{expr} parsed: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn invalid_expressions_say_what_is_wrong() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["0 fields", "expected 5"]),
            ("0 2 * *", &["4 fields", "expected 5"]),
            ("0 2 * * * * * *", &["8 fields"]),
            ("0 25 * * *", &["hour field \"25\"", "out of range", "0-23"]),
            ("60 2 * * *", &["minute field", "0-59"]),
            ("0 2 0 * *", &["day-of-month field \"0\"", "1-31"]),
            ("0 2 * 13 *", &["month field", "1-12 or JAN-DEC"]),
            ("0 2 * * 8", &["day-of-week field \"8\"", "0-7"]),
            ("0 2 * * FRY", &["unknown name \"FRY\"", "SUN-SAT"]),
            ("0 2 * * Saturday", &["unknown name \"Saturday\""]),
            ("0 2 * JUNE *", &["unknown name \"JUNE\"", "JAN-DEC"]),
            ("0 MON * * *", &["hour field", "unknown name \"MON\""]),
            ("*/0 * * * *", &["minute field \"*/0\"", "step \"0\""]),
            ("*/x * * * *", &["step \"x\""]),
            ("0 2 20-10 * *", &["20-10", "backwards"]),
            ("0 2 * * SAT-MON", &["6-1", "backwards"]),
            ("0 2 1,,2 * *", &["cannot read \"\""]),
            ("0 -1 * * *", &["cannot read \"-1\""]),
            ("0 2 * * 1-5-7", &["cannot read"]),
            ("@reboot", &["@reboot is not supported"]),
            ("@every 5m", &["unknown macro", "@daily"]),
            ("0 0 25 * * *", &["hour field \"25\"", "0-23"]),
            ("0 0 2 * * 8", &["day-of-week field \"8\"", "1 = Sunday"]),
            ("0 0 0 1 1 * 1900", &["year field \"1900\"", "1970-2100"]),
        ];
        for (expr, needles) in cases {
            let message = error(expr);
            for needle in *needles {
                assert!(
                    message.contains(needle),
                    "{expr}: {message:?} lacks {needle:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_zones_and_durations() {
        let message = parse_timezone("Berlin").expect_err("not IANA").to_string();
        assert!(
            message.contains("IANA") && message.contains("\"Europe/Berlin\"?"),
            "{message}"
        );
        let message = parse_timezone("america/new_york")
            .expect_err("case")
            .to_string();
        assert!(
            message.contains("did you mean \"America/New_York\""),
            "{message}"
        );
        let message = parse_timezone("Mars/Olympus")
            .expect_err("unknown")
            .to_string();
        assert!(
            message.contains("IANA") && !message.contains("did you mean"),
            "{message}"
        );
        assert_eq!(
            parse_timezone("Asia/Kolkata").expect("zone"),
            chrono_tz::Asia::Kolkata
        );
        assert_eq!(parse_duration("3h").expect("duration"), 3 * HOUR);
        assert_eq!(parse_duration("1day 2h").expect("duration"), 26 * HOUR);
        assert!(parse_duration("0s")
            .expect_err("zero")
            .to_string()
            .contains("longer than zero"));
        assert!(parse_duration("three hours")
            .expect_err("words")
            .to_string()
            .contains("\"3h\""));
        let e = Window::from_spec("w", "0 2 * * SAT", "3h", "CEST").expect_err("zone");
        assert!(matches!(e, ScheduleError::UnknownTimeZone { .. }));
    }
}

/// Randomised comparison against an independent brute-force evaluation of Unix cron.
mod oracle {
    use std::sync::OnceLock;

    use chrono::NaiveDateTime;
    use proptest::prelude::*;

    use super::*;

    const ZONES: [&str; 6] = [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
        "Pacific/Chatham",
    ];
    const DAY_NAMES: [&str; 7] = ["sun", "MON", "Tue", "WED", "thu", "FRI", "Sat"];
    const MONTH_NAMES: [&str; 12] = [
        "JAN", "feb", "MAR", "Apr", "MAY", "JUN", "jul", "AUG", "SEP", "Oct", "NOV", "DEC",
    ];

    #[derive(Debug, Clone)]
    enum Item {
        Value(u32),
        Name(u32),
        Range(u32, u32),
        Step(Option<(u32, u32)>, u32),
    }

    #[derive(Debug, Clone)]
    struct Field {
        star: bool,
        items: Vec<Item>,
    }

    impl Field {
        fn render(&self, names: &[&str], first: u32) -> String {
            if self.star {
                return "*".into();
            }
            let items: Vec<String> = self
                .items
                .iter()
                .map(|item| match *item {
                    Item::Value(v) => v.to_string(),
                    Item::Name(v) => names[(v - first) as usize].to_string(),
                    Item::Range(a, b) => format!("{a}-{b}"),
                    Item::Step(None, k) => format!("*/{k}"),
                    Item::Step(Some((a, b)), k) => format!("{a}-{b}/{k}"),
                })
                .collect();
            items.join(",")
        }

        /// robfig/cron: a `*` or `*/1` item leaves the field unrestricted.
        fn restricted(&self) -> bool {
            !self.star && !self.items.iter().any(|i| matches!(i, Item::Step(None, 1)))
        }

        /// Which values in 0..=max match, by the crontab(5) definitions.
        fn table(&self, min: u32, max: u32) -> Vec<bool> {
            (0..=max)
                .map(|v| {
                    v >= min
                        && (self.star
                            || self.items.iter().any(|item| match *item {
                                Item::Value(x) | Item::Name(x) => v == x,
                                Item::Range(a, b) => a <= v && v <= b,
                                Item::Step(None, k) => (v - min).is_multiple_of(k),
                                Item::Step(Some((a, b)), k) => a <= v && v <= b && (v - a) % k == 0,
                            }))
                })
                .collect()
        }
    }

    fn field(
        min: u32,
        max: u32,
        names: Option<(u32, u32)>,
        star_weight: u32,
    ) -> impl Strategy<Value = Field> {
        let value = min..=max;
        let numeric = prop_oneof![
            3 => value.clone().prop_map(Item::Value),
            2 => (value.clone(), value.clone()).prop_map(|(a, b)| Item::Range(a.min(b), a.max(b))),
            1 => (1..=max / 2 + 1).prop_map(|k| Item::Step(None, k)),
            1 => (value.clone(), value, 1..=4u32)
                .prop_map(|(a, b, k)| Item::Step(Some((a.min(b), a.max(b))), k)),
        ];
        let item = match names {
            Some((first, last)) => {
                prop_oneof![3 => numeric, 1 => (first..=last).prop_map(Item::Name)].boxed()
            }
            None => numeric.boxed(),
        };
        prop_oneof![
            star_weight => Just(Field { star: true, items: vec![] }),
            4 => prop::collection::vec(item, 1..=3).prop_map(|items| Field { star: false, items }),
        ]
    }

    #[derive(Debug, Clone)]
    struct Cron {
        minute: Field,
        hour: Field,
        dom: Field,
        month: Field,
        dow: Field,
    }

    impl Cron {
        fn render(&self) -> String {
            format!(
                "{} {} {} {} {}",
                self.minute.render(&[], 0),
                self.hour.render(&[], 0),
                self.dom.render(&[], 1),
                self.month.render(&MONTH_NAMES, 1),
                self.dow.render(&DAY_NAMES, 0)
            )
        }
    }

    fn cron() -> impl Strategy<Value = Cron> {
        (
            field(0, 59, None, 1),
            field(0, 23, None, 2),
            field(1, 31, None, 6),
            field(1, 12, Some((1, 12)), 8),
            field(0, 7, Some((0, 6)), 3),
        )
            .prop_map(|(minute, hour, dom, month, dow)| Cron {
                minute,
                hour,
                dom,
                month,
                dow,
            })
    }

    /// Brute-force matcher for one wall-clock minute.
    struct Matcher {
        minute: Vec<bool>,
        hour: Vec<bool>,
        dom: Vec<bool>,
        month: Vec<bool>,
        dow: Vec<bool>,
        either_day: bool,
    }

    impl Matcher {
        fn new(c: &Cron) -> Matcher {
            Matcher {
                minute: c.minute.table(0, 59),
                hour: c.hour.table(0, 23),
                dom: c.dom.table(1, 31),
                month: c.month.table(1, 12),
                dow: c.dow.table(0, 7),
                either_day: c.dom.restricted() && c.dow.restricted(),
            }
        }

        fn matches(&self, t: NaiveDateTime) -> bool {
            let wd = t.weekday().num_days_from_sunday() as usize;
            let dom = self.dom[t.day() as usize];
            let dow = self.dow[wd] || (wd == 0 && self.dow[7]);
            let day = if self.either_day {
                dom || dow
            } else {
                dom && dow
            };
            self.minute[t.minute() as usize]
                && self.hour[t.hour() as usize]
                && self.month[t.month() as usize]
                && day
        }
    }

    /// Gap: the first wall-clock minute that exists; fold: the earlier instant.
    fn to_instant(tz: Tz, mut local: NaiveDateTime) -> DateTime<Utc> {
        loop {
            if let Some(t) = tz.from_local_datetime(&local).earliest() {
                return t.with_timezone(&Utc);
            }
            local += TimeDelta::minutes(1);
        }
    }

    /// The earliest firing covering `t`, by scanning every wall-clock minute around the window.
    fn oracle_opened_at(c: &Cron, tz: Tz, t: DateTime<Utc>, d: TimeDelta) -> Option<DateTime<Utc>> {
        let m = Matcher::new(c);
        let wall = |u: DateTime<Utc>| u.with_timezone(&tz).naive_local();
        let top = wall(t) + TimeDelta::hours(3);
        let mut local = (wall(t - d) - TimeDelta::hours(3))
            .with_second(0)
            .and_then(|l| l.with_nanosecond(0))
            .expect("valid");
        let mut best: Option<DateTime<Utc>> = None;
        while local <= top {
            if m.matches(local) {
                let s = to_instant(tz, local);
                if t - d < s && s <= t && best.is_none_or(|b| s < b) {
                    best = Some(s);
                }
            }
            local += TimeDelta::minutes(1);
        }
        best
    }

    /// Instants in 2025-2028 at which the zone's offset changes.
    fn transitions(tz: Tz) -> &'static [DateTime<Utc>] {
        static ALL: OnceLock<Vec<Vec<DateTime<Utc>>>> = OnceLock::new();
        let all = ALL.get_or_init(|| {
            ZONES
                .iter()
                .map(|name| {
                    let tz = zone(name);
                    let offset = |t: DateTime<Utc>| t.with_timezone(&tz).offset().to_string();
                    let start = utc("2025-01-01T00:00:00Z");
                    (0..4 * 366)
                        .map(|i| start + TimeDelta::days(i))
                        .filter(|&day| offset(day) != offset(day + TimeDelta::days(1)))
                        .map(|day| {
                            let (mut before, mut after) = (day, day + TimeDelta::days(1));
                            while after - before > TimeDelta::seconds(1) {
                                let mid = before + (after - before) / 2;
                                if offset(mid) == offset(day) {
                                    before = mid;
                                } else {
                                    after = mid;
                                }
                            }
                            after
                        })
                        .collect()
                })
                .collect()
        });
        let index = ZONES.iter().position(|z| *z == tz.name()).expect("listed");
        &all[index]
    }

    /// An instant in 2025-2028; when `near`, within the window's reach of a DST transition.
    fn instant(
        tz: Tz,
        near: bool,
        pick: u64,
        seconds: i64,
        d: TimeDelta,
        whole_minute: bool,
    ) -> DateTime<Utc> {
        let ts = transitions(tz);
        let t = if near && !ts.is_empty() {
            let reach = (d + TimeDelta::hours(4)).num_seconds();
            ts[pick as usize % ts.len()] + TimeDelta::seconds(seconds % reach - 7200)
        } else {
            utc("2025-01-01T00:00:00Z") + TimeDelta::seconds(seconds)
        };
        if whole_minute {
            t.with_second(0).expect("valid")
        } else {
            t
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn is_open_agrees_with_brute_force(
            c in cron(),
            zone_index in 0..ZONES.len(),
            near in any::<bool>(),
            pick in any::<u64>(),
            seconds in 0i64..4 * 365 * 86_400,
            whole_minute in any::<bool>(),
            minutes in prop_oneof![1i64..=120, 1i64..=3 * 24 * 60],
        ) {
            let expr = c.render();
            let tz = zone(ZONES[zone_index]);
            let d = TimeDelta::minutes(minutes);
            let t = instant(tz, near, pick, seconds, d, whole_minute);
            let w = Window {
                name: "p".into(),
                schedule: Schedule::parse(&expr).map_err(|e| TestCaseError::fail(e.to_string()))?,
                duration: d.to_std().expect("positive"),
                tz,
            };
            let expected = oracle_opened_at(&c, tz, t, d);
            prop_assert_eq!(w.is_open(t), expected.is_some(), "{} in {} at {}", expr, tz, t);
            let state = w.state_at(t);
            prop_assert_eq!(state.opened_at, expected, "{} in {} at {}", expr, tz, t);
            prop_assert_eq!(state.open, expected.is_some());
            if let Some(closes) = state.closes_at {
                prop_assert!(closes > t && state.open);
            }
            prop_assert!(state.next_open.is_none_or(|n| n > t));
        }

        #[test]
        fn firings_are_strictly_increasing_and_match(
            c in cron(),
            zone_index in 0..ZONES.len(),
            near in any::<bool>(),
            pick in any::<u64>(),
            seconds in 0i64..4 * 365 * 86_400,
        ) {
            let expr = c.render();
            let tz = zone(ZONES[zone_index]);
            let from = instant(tz, near, pick, seconds, TimeDelta::hours(2), false);
            let s = Schedule::parse(&expr).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let m = Matcher::new(&c);
            let fs: Vec<_> = s.firings_from(from, tz).take(200).collect();
            prop_assert!(fs.first().is_none_or(|&f| f >= from));
            prop_assert!(fs.windows(2).all(|w| w[0] < w[1]), "{} in {}: {:?}", expr, tz, fs);
            for f in fs {
                let offset = |u: DateTime<Utc>| u.with_timezone(&tz).offset().to_string();
                let at_transition = offset(f - TimeDelta::seconds(1)) != offset(f);
                prop_assert!(
                    m.matches(f.with_timezone(&tz).naive_local()) || at_transition,
                    "{} in {}: {}", expr, tz, f
                );
            }
        }
    }
}
