//! The files of one commit, read from the object database: no checkout, so
//! the working tree (if any) never matters and any revision can be read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::Revision;

/// Files over this size are refused: large content belongs in artifacts,
/// which are staged, verified and deduplicated by digest.
pub const MAX_FILE_SIZE: u64 = 4 * 1024 * 1024;

/// One tree entry of a commit.
#[derive(Debug, Clone)]
pub enum Entry {
    File {
        data: Arc<[u8]>,
        executable: bool,
    },
    /// A blob over [`MAX_FILE_SIZE`]: known, but not read.
    Oversize {
        size: u64,
    },
    Symlink {
        target: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("{path:?} is absolute; paths are relative to the file that names them")]
    Absolute { path: String },
    #[error("{path:?} leaves the repository")]
    Escapes { path: String },
    #[error("{path:?} leaves the repository through the symlink {link:?} -> {target:?}")]
    EscapesThroughSymlink {
        path: String,
        link: String,
        target: String,
    },
    #[error("{path:?}: too many levels of symbolic links")]
    SymlinkLoop { path: String },
}

/// All files of one commit, keyed by repository-relative path (`a/b.yaml`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: Revision,
    entries: BTreeMap<String, Entry>,
    /// Paths of git submodules (gitlinks): known, so that a path into one
    /// is reported as such, never read.
    submodules: BTreeSet<String>,
}

impl Snapshot {
    pub fn new(revision: Revision, entries: BTreeMap<String, Entry>) -> Self {
        Snapshot {
            revision,
            entries,
            submodules: BTreeSet::new(),
        }
    }

    /// The same files, with these submodule paths.
    pub fn with_submodules(mut self, paths: impl IntoIterator<Item = String>) -> Self {
        self.submodules = paths.into_iter().collect();
        self
    }

    /// Why `path` has nothing in it, when the reason is that it is (or is in)
    /// a submodule: a submodule's files are another repository's.
    pub fn in_submodule(&self, path: &str) -> Option<String> {
        const WHY: &str = "fermata reads only the repository's own files (submodules are not supported); copy the files into the repository";
        let sub = self
            .submodules
            .iter()
            .find(|s| path == s.as_str() || path.starts_with(&format!("{s}/")))?;
        Some(if sub == path {
            format!("{path:?} is a git submodule: {WHY}")
        } else {
            format!("{path:?} is in the git submodule {sub:?}: {WHY}")
        })
    }

    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Content of a regular file, following symlinks that stay inside the repository.
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        match self.entries.get(path)? {
            Entry::File { data, .. } => Some(data),
            Entry::Symlink { .. } => {
                let (dir, name) = split(path);
                let real = self.resolve(dir, name).ok()?;
                match self.entries.get(&real)? {
                    Entry::File { data, .. } => Some(data),
                    _ => None,
                }
            }
            Entry::Oversize { .. } => None,
        }
    }

    /// Every entry below `dir` (`""` for the whole tree), in path order.
    pub fn under<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(|(p, e)| (p.as_str(), e))
    }

    /// Whether `path` is a directory of this tree (has entries below it).
    pub fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || self.under(path).next().is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Resolves `rel` against directory `base`, following symlinks of the tree,
    /// and refuses anything that ends up outside the repository: a user's
    /// `../` or absolute path, or a symlink that points out of it.
    pub fn resolve(&self, base: &str, rel: &str) -> Result<String, PathError> {
        if rel.starts_with('/') {
            return Err(PathError::Absolute {
                path: rel.to_string(),
            });
        }
        let mut done: Vec<String> = components(base).map(str::to_string).collect();
        let mut todo: VecDeque<String> = components(rel).map(str::to_string).collect();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_str() {
                "." => {}
                ".." => {
                    if done.pop().is_none() {
                        return Err(PathError::Escapes {
                            path: rel.to_string(),
                        });
                    }
                }
                _ => {
                    done.push(c);
                    let here = done.join("/");
                    if let Some(Entry::Symlink { target }) = self.entries.get(&here) {
                        hops += 1;
                        if hops > 40 {
                            return Err(PathError::SymlinkLoop {
                                path: rel.to_string(),
                            });
                        }
                        if target.starts_with('/') || escapes(&done[..done.len() - 1], target) {
                            return Err(PathError::EscapesThroughSymlink {
                                path: rel.to_string(),
                                link: here,
                                target: target.clone(),
                            });
                        }
                        done.pop();
                        for t in components(target).rev() {
                            todo.push_front(t.to_string());
                        }
                    }
                }
            }
        }
        Ok(done.join("/"))
    }
}

/// Whether a symlink `target`, relative to directory `dir`, climbs above the root.
fn escapes(dir: &[String], target: &str) -> bool {
    let mut depth = dir.len() as isize;
    for c in components(target) {
        match c {
            "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

fn components(p: &str) -> impl DoubleEndedIterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty())
}

/// Splits `a/b/c.yaml` into (`a/b`, `c.yaml`).
pub fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(entries: &[(&str, Entry)]) -> Snapshot {
        Snapshot::new(
            Revision(git2::Oid::ZERO_SHA1),
            entries
                .iter()
                .map(|(p, e)| (p.to_string(), e.clone()))
                .collect(),
        )
    }

    fn file() -> Entry {
        Entry::File {
            data: Arc::from(&b"x"[..]),
            executable: false,
        }
    }

    fn link(t: &str) -> Entry {
        Entry::Symlink {
            target: t.to_string(),
        }
    }

    #[test]
    fn resolves_relative_paths_and_refuses_escapes() {
        let s = snap(&[
            ("a/b/m.yaml", file()),
            ("a/in", link("b")),
            ("a/out", link("../../etc")),
            ("a/abs", link("/etc")),
            ("a/loop", link("loop")),
        ]);
        assert_eq!(s.resolve("a", "./b").unwrap(), "a/b");
        assert_eq!(s.resolve("a/b", "../b/m.yaml").unwrap(), "a/b/m.yaml");
        assert_eq!(s.resolve("a", "in/m.yaml").unwrap(), "a/b/m.yaml");
        assert!(matches!(
            s.resolve("a", "../../x"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(
            s.resolve("a", "/etc"),
            Err(PathError::Absolute { .. })
        ));
        assert!(matches!(
            s.resolve("a", "out/passwd"),
            Err(PathError::EscapesThroughSymlink { .. })
        ));
        assert!(matches!(
            s.resolve("a", "abs"),
            Err(PathError::EscapesThroughSymlink { .. })
        ));
        assert!(matches!(
            s.resolve("a", "loop"),
            Err(PathError::SymlinkLoop { .. })
        ));
    }

    #[test]
    fn under_lists_only_the_folder() {
        let s = snap(&[
            ("a/x", file()),
            ("a/y/z", file()),
            ("ab", file()),
            ("b", file()),
        ]);
        let got: Vec<_> = s.under("a").map(|(p, _)| p).collect();
        assert_eq!(got, vec!["a/x", "a/y/z"]);
        assert_eq!(s.under("").count(), 4);
        assert!(s.is_dir("a/y"));
        assert!(!s.is_dir("a/x"));
    }
}
