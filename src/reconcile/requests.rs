//! What operators record without a commit: `fermata ungate`, `fermata
//! apply-now` and `fermata rollback` (DESIGN.md invariant 9: nothing an operator recorded is lost).
//!
//! Each record is one file under `<state-dir>/requests/`, named uniquely,
//! written once (temp file, fsync, rename, fsync of the folder) and never
//! rewritten; the reconciler only reads them and deletes one, by its unique
//! name, once it no longer applies. The short commands and a running
//! `fermata run` therefore never write the same file: neither can overwrite
//! the other's record, and a kill -9 leaves a record either whole or absent.
//! (They used to live in `state.json`, which the daemon rewrites from memory
//! every pass: an ungate given while it ran was gone seconds later.)

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::status::{Override, Ungate};

/// One operator record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Request {
    /// A scheduling gate of `composition` lifted.
    Ungate {
        composition: String,
        #[serde(flatten)]
        ungate: Ungate,
    },
    /// Break glass: `composition`'s staged digest applied outside its window.
    ApplyNow {
        composition: String,
        #[serde(flatten)]
        grant: Override,
    },
    /// `composition`'s applied state (`grant.digest`) switched back to the
    /// one before it, and held from being applied again until the desired
    /// digest changes.
    Rollback {
        composition: String,
        #[serde(flatten)]
        grant: Override,
    },
}

impl Request {
    pub fn composition(&self) -> &str {
        match self {
            Request::Ungate { composition, .. }
            | Request::ApplyNow { composition, .. }
            | Request::Rollback { composition, .. } => composition,
        }
    }
}

/// The folder of records.
#[derive(Debug, Clone)]
pub struct Requests {
    dir: PathBuf,
}

/// The records in force, by composition (`symphony/variation`), each with
/// the file it came from (what [`Requests::forget`] takes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// Per composition, per gate: the newest lift.
    pub ungated: BTreeMap<String, BTreeMap<String, (String, Ungate)>>,
    /// Per composition: the newest grant.
    pub overrides: BTreeMap<String, (String, Override)>,
    /// Per composition: the newest `fermata rollback`.
    pub rollbacks: BTreeMap<String, (String, Override)>,
    /// Files of this load that a newer record replaced.
    superseded: Vec<String>,
}

impl Recorded {
    /// Records superseded, as of this load, by a newer one for the same
    /// composition (and gate): safe to delete, since a load never returns
    /// them. Only files that load saw: one written since is not even looked at.
    pub fn superseded(&self) -> &[String] {
        &self.superseded
    }

    pub fn ungates(&self, composition: &str) -> Vec<Ungate> {
        self.ungated
            .get(composition)
            .map(|g| g.values().map(|(_, u)| u.clone()).collect())
            .unwrap_or_default()
    }
}

impl Requests {
    pub fn new(state_dir: &Path) -> Requests {
        Requests {
            dir: state_dir.join("requests"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `req` as a new file; returns its name.
    pub fn record(&self, req: &Request) -> std::io::Result<String> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(req).map_err(std::io::Error::other)?;
        // Nanoseconds, pid and a random part: unique across processes and
        // within one, and in time order for a person listing the folder.
        let name = format!(
            "{}-{}-{:08x}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.9fZ"),
            std::process::id(),
            rand::random::<u32>()
        );
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(&name))?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| name)
    }

    /// Every record, oldest first. A file that cannot be read is left in
    /// place and skipped with a warning (a person may mend it); a missing
    /// folder is no records.
    pub fn load(&self) -> Recorded {
        let mut names: Vec<String> = match std::fs::read_dir(&self.dir) {
            Ok(d) => d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        let mut out = Recorded::default();
        for name in names {
            let path = self.dir.join(&name);
            let req: Request = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "operator record unreadable: skipped");
                    continue;
                }
            };
            // Names sort in time order: a later one replaces an earlier one.
            let replaced = match req {
                Request::Ungate {
                    composition,
                    ungate,
                } => out
                    .ungated
                    .entry(composition)
                    .or_default()
                    .insert(ungate.gate.clone(), (name, ungate))
                    .map(|(n, _)| n),
                Request::ApplyNow { composition, grant } => out
                    .overrides
                    .insert(composition, (name, grant))
                    .map(|(n, _)| n),
                Request::Rollback { composition, grant } => out
                    .rollbacks
                    .insert(composition, (name, grant))
                    .map(|(n, _)| n),
            };
            out.superseded.extend(replaced);
        }
        out
    }

    /// Deletes one record by the name [`load`](Self::load) gave it, and any
    /// older record it superseded is left to the caller. A record already
    /// gone is fine.
    pub fn forget(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    fn at(s: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + i64::from(s), 0).unwrap()
    }

    fn ungate(comp: &str, gate: &str, s: u32) -> Request {
        Request::Ungate {
            composition: comp.into(),
            ungate: Ungate {
                gate: gate.into(),
                who: "ops".into(),
                why: "approved".into(),
                at: at(s),
            },
        }
    }

    #[test]
    fn records_round_trip_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let r = Requests::new(dir.path());
        assert_eq!(r.load(), Recorded::default(), "no folder, no records");
        let first = r.record(&ungate("a/v", "g", 1)).unwrap();
        let second = r.record(&ungate("a/v", "g", 2)).unwrap();
        r.record(&ungate("a/v", "h", 3)).unwrap();
        let rec = r.load();
        assert_eq!(rec.ungates("a/v").len(), 2);
        assert_eq!(rec.ungated["a/v"]["g"].0, second);
        assert_eq!(rec.superseded(), std::slice::from_ref(&first));
        r.forget(&first).unwrap();
        r.forget(&first).unwrap();
        assert!(r.load().superseded().is_empty());
        // A broken file is skipped and kept.
        std::fs::write(r.dir().join("zz-broken.json"), b"{").unwrap();
        assert_eq!(r.load().ungates("a/v").len(), 2);
        assert!(r.load().superseded().is_empty());
        assert!(r.dir().join("zz-broken.json").exists());
    }

    /// What a test sequence does: an operator records, or the daemon runs a
    /// pass (reading the records, then forgetting those whose gate the
    /// commit no longer lists), or the daemon dies and starts again.
    #[derive(Debug, Clone)]
    enum Op {
        Ungate(u8, u8),
        Pass(Vec<u8>),
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 0u8..3).prop_map(|(c, g)| Op::Ungate(c, g)),
            proptest::collection::vec(0u8..3, 0..3).prop_map(Op::Pass),
            Just(Op::Crash),
        ]
    }

    proptest! {
        /// Invariant 9: whatever the interleaving of operator records,
        /// daemon passes and restarts, a lift stays recorded for as long as
        /// its gate is in the commit, and is forgotten only once it is not.
        #[test]
        fn no_lift_is_lost_while_its_gate_is_listed(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let r = Requests::new(dir.path());
            // The model: lifts given, per (composition, gate).
            let mut given: std::collections::BTreeSet<(u8, u8)> = Default::default();
            // The daemon's memory, lost at a crash.
            let mut seen = Recorded::default();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Ungate(c, g) => {
                        r.record(&ungate(&format!("s/c{c}"), &format!("g{g}"), i as u32)).unwrap();
                        given.insert((c, g));
                    }
                    Op::Pass(gates) => {
                        seen = r.load();
                        for (comp, lifts) in &seen.ungated {
                            for (gate, (name, _)) in lifts {
                                let g: u8 = gate[1..].parse().unwrap();
                                if !gates.contains(&g) {
                                    r.forget(name).unwrap();
                                    let c: u8 = comp[3..].parse().unwrap();
                                    given.remove(&(c, g));
                                }
                            }
                        }
                        for name in seen.superseded() {
                            r.forget(name).unwrap();
                        }
                    }
                    Op::Crash => seen = Recorded::default(),
                }
                let now = r.load();
                for (c, g) in &given {
                    prop_assert!(
                        now.ungated.get(&format!("s/c{c}")).is_some_and(|l| l.contains_key(&format!("g{g}"))),
                        "lift c{c}/g{g} lost"
                    );
                }
            }
            let _ = seen;
        }
    }
}
