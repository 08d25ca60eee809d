//! Sites (DESIGN.md section 9): the places a fleet runs at, and the
//! selectors that place a symphony on some of them. Pure values: loading
//! checks them ([`super::load`]), placement uses them ([`super::placement`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::Origin;

/// One Site object: its name, labels and env, the values synthesis sees as
/// `${site.name}`, `${site.labels.KEY}` and `${site.env.NAME}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub name: String,
    /// Where the Site is defined: errors about its values point there.
    #[serde(skip)]
    pub origin: Origin,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

/// Which sites a symphony is placed on. The default (no clause) selects every
/// site, as `spec.sites` absent does; every clause given must hold, as in a
/// Kubernetes label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
    /// `Some`: only these sites (`Some` of an empty set selects none).
    pub names: Option<BTreeSet<String>>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Empty for `Exists` and `DoesNotExist`, non-empty for `In` and `NotIn`.
    pub values: BTreeSet<String>,
}

/// The operators of a Kubernetes set-based requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub const ALL: [&'static str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

    pub fn parse(s: &str) -> Option<Operator> {
        match s {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            _ => None,
        }
    }

    /// Whether the operator compares values (`In`, `NotIn`) or only keys.
    pub fn takes_values(self) -> bool {
        matches!(self, Operator::In | Operator::NotIn)
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        })
    }
}

impl Requirement {
    /// Kubernetes semantics: `NotIn` holds for a site without the key.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl SiteSelector {
    /// Whether `site` is selected: every clause holds.
    pub fn matches(&self, site: &Site) -> bool {
        self.names.as_ref().is_none_or(|n| n.contains(&site.name))
            && self
                .match_labels
                .iter()
                .all(|(k, v)| site.labels.get(k) == Some(v))
            && self
                .match_expressions
                .iter()
                .all(|r| r.matches(&site.labels))
    }

    /// The names of the sites of `sites` it selects, in name order.
    pub fn select<'a>(&self, sites: &'a BTreeMap<String, Site>) -> Vec<&'a str> {
        sites
            .values()
            .filter(|s| self.matches(s))
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// A site name that no Site object of the repository defines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownSite {
    /// Without Site objects there is only the implicit site, which has no name.
    #[error("no site {name:?}: the repository defines no Site objects")]
    NoSites { name: String },
    /// Defined, but it does not load: not the same as gone.
    #[error("Site {name:?} is invalid: {why}")]
    Invalid { name: String, why: String },
    #[error("no Site named {name:?}{}", suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default())]
    Unknown {
        name: String,
        /// The closest known name, when one is close enough.
        suggestion: Option<String>,
    },
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name
/// of 1-63 alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    if prefix_ok && !name.is_empty() && label_chars_ok(name) {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a valid label key: an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// Checks a label value: empty, or as a label key's name part.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || label_chars_ok(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn label_chars_ok(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    s.len() <= 63
        && s.bytes().all(|b| alnum(b) || b"-_.".contains(&b))
        && s.bytes().next().is_some_and(alnum)
        && s.bytes().last().is_some_and(alnum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, labels: &[(&str, &str)]) -> Site {
        Site {
            name: name.into(),
            origin: Origin {
                file: "sites.yaml".into(),
                line: 1,
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env: BTreeMap::new(),
        }
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_table() {
        use Operator::*;
        let canary_eu = site("plant-a", &[("ring", "canary"), ("region", "eu")]);
        let stable_eu = site("plant-b", &[("ring", "stable"), ("region", "eu")]);
        let bare = site("plant-c", &[]);
        let names = |n: &[&str]| Some(n.iter().map(|s| s.to_string()).collect());
        let cases: Vec<(&str, SiteSelector, [bool; 3])> = vec![
            (
                "empty selects every site",
                SiteSelector::default(),
                [true, true, true],
            ),
            (
                "matchLabels, one pair",
                SiteSelector {
                    match_labels: labels(&[("region", "eu")]),
                    ..Default::default()
                },
                [true, true, false],
            ),
            (
                "matchLabels, every pair must hold",
                SiteSelector {
                    match_labels: labels(&[("region", "eu"), ("ring", "canary")]),
                    ..Default::default()
                },
                [true, false, false],
            ),
            (
                "In",
                SiteSelector {
                    match_expressions: vec![req("ring", In, &["canary", "beta"])],
                    ..Default::default()
                },
                [true, false, false],
            ),
            (
                "NotIn holds where the key is missing",
                SiteSelector {
                    match_expressions: vec![req("ring", NotIn, &["canary"])],
                    ..Default::default()
                },
                [false, true, true],
            ),
            (
                "Exists",
                SiteSelector {
                    match_expressions: vec![req("ring", Exists, &[])],
                    ..Default::default()
                },
                [true, true, false],
            ),
            (
                "DoesNotExist",
                SiteSelector {
                    match_expressions: vec![req("ring", DoesNotExist, &[])],
                    ..Default::default()
                },
                [false, false, true],
            ),
            (
                "expressions AND labels",
                SiteSelector {
                    match_labels: labels(&[("region", "eu")]),
                    match_expressions: vec![req("ring", NotIn, &["canary"])],
                    ..Default::default()
                },
                [false, true, false],
            ),
            (
                "names only",
                SiteSelector {
                    names: names(&["plant-c", "plant-a"]),
                    ..Default::default()
                },
                [true, false, true],
            ),
            (
                "names: [] selects none",
                SiteSelector {
                    names: names(&[]),
                    ..Default::default()
                },
                [false, false, false],
            ),
            (
                "names AND labels",
                SiteSelector {
                    match_labels: labels(&[("region", "eu")]),
                    names: names(&["plant-b", "plant-c"]),
                    ..Default::default()
                },
                [false, true, false],
            ),
        ];
        for (name, sel, want) in cases {
            let got = [&canary_eu, &stable_eu, &bare].map(|s| sel.matches(s));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn select_lists_matching_sites_in_name_order() {
        let sites: BTreeMap<String, Site> = [
            site("b", &[("ring", "canary")]),
            site("a", &[("ring", "canary")]),
            site("c", &[]),
        ]
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
        let sel = SiteSelector {
            match_labels: labels(&[("ring", "canary")]),
            ..Default::default()
        };
        assert_eq!(sel.select(&sites), ["a", "b"]);
    }

    #[test]
    fn label_syntax() {
        for ok in ["ring", "example.com/ring", "a_b.c-d", "A1"] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-ring",
            "ring-",
            "a/b/c",
            "/ring",
            "Ex.com/ring",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(check_label_key(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "canary", "v1.2_3"] {
            assert!(check_label_value(ok).is_ok(), "{ok}");
        }
        for bad in ["-x", "x.", "a/b", &"x".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_site_messages() {
        let e = UnknownSite::Unknown {
            name: "plant-x".into(),
            suggestion: Some("plant-a".into()),
        };
        assert_eq!(
            e.to_string(),
            "no Site named \"plant-x\" (did you mean \"plant-a\"?)"
        );
        let e = UnknownSite::NoSites { name: "p".into() };
        assert_eq!(
            e.to_string(),
            "no site \"p\": the repository defines no Site objects"
        );
    }
}
