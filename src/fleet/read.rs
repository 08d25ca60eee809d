//! Reading the fleet out of Git: every `fermata/sites/<site>` branch and
//! the watched branch's head, into a [`FleetInput`].
//!
//! A local repository is read in place (its refs are what the sites
//! pushed). A URL is read through a bare cache under the state directory,
//! `<state-dir>/fleet/<first 16 hex digits of the URL's SHA-256>.git`, kept
//! between runs so a fetch only brings what changed: one fetch of
//! `refs/heads/fermata/sites/*` and of the watched branch, under the same
//! `--git-timeout`/`--git-connect-timeout` as every remote call of fermata,
//! skipped when the advertised refs equal the cache's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use git2::{AutotagOption, Direction, FetchOptions, Oid, Repository};

use super::view::{FleetInput, SiteReport};
use super::FleetError;
use crate::status::{StatusRepo, SITE_BRANCH_PREFIX};

/// How far back a site's status history is searched for its last report of
/// the branch (its other watched branches' commits come between).
const MAX_WALK: usize = 10_000;

/// Where the fleet of `repo` is read from, brought up to date; and the
/// branch to compare with (`branch`, else the repository's default).
pub fn open(
    repo: &str,
    state_dir: &Path,
    branch: Option<&str>,
) -> Result<(PathBuf, String), FleetError> {
    if !crate::source::is_url(repo) {
        let r = Repository::open(repo).map_err(git(repo, "open"))?;
        let branch = match branch {
            Some(b) => b.to_string(),
            None => head_branch(&r).ok_or_else(|| FleetError::NoBranch {
                repo: repo.to_string(),
            })?,
        };
        return Ok((r.path().to_path_buf(), branch));
    }
    let dir = state_dir.join("fleet").join(format!(
        "{}.git",
        &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(repo.as_bytes()))[..16]
    ));
    let cache = match Repository::open_bare(&dir) {
        Ok(r) => r,
        Err(_) => {
            std::fs::create_dir_all(&dir).map_err(|source| FleetError::Cache {
                repo: repo.to_string(),
                path: dir.display().to_string(),
                source,
            })?;
            Repository::init_bare(&dir).map_err(git(repo, "create the fleet cache"))?
        }
    };
    let branch = fetch(&cache, &dir, repo, branch)?;
    Ok((dir, branch))
}

/// One fetch of the site branches and `branch` (the remote's default
/// when `None`, learnt from the same connection's advertisement).
fn fetch(
    cache: &Repository,
    dir: &Path,
    url: &str,
    branch: Option<&str>,
) -> Result<String, FleetError> {
    let started = std::time::Instant::now();
    let remote_err = |context: &'static str| {
        move |e: git2::Error| FleetError::Git {
            repo: url.to_string(),
            context: context.to_string(),
            source: crate::source::remote_error(e, started),
        }
    };
    let mut remote = cache.remote_anonymous(url).map_err(remote_err("connect"))?;
    let (branch, theirs) = {
        let conn = remote
            .connect_auth(Direction::Fetch, Some(crate::source::callbacks()), None)
            .map_err(remote_err("connect"))?;
        let branch = match branch {
            Some(b) => b.to_string(),
            None => conn
                .default_branch()
                .ok()
                .and_then(|b| b.as_str().ok().map(str::to_string))
                .and_then(|b| b.strip_prefix("refs/heads/").map(str::to_string))
                .ok_or_else(|| FleetError::NoBranch {
                    repo: url.to_string(),
                })?,
        };
        let theirs: BTreeMap<String, Oid> = conn
            .list()
            .map_err(remote_err("list refs"))?
            .iter()
            .filter(|h| wanted(h.name(), &branch))
            .map(|h| (h.name().to_string(), h.oid()))
            .collect();
        (branch, theirs)
    };
    let ours: BTreeMap<String, Oid> = cache
        .references()
        .map_err(git(url, "list the cache's refs"))?
        .flatten()
        .filter_map(|r| Some((r.name().ok()?.to_string(), r.target()?)))
        .filter(|(name, _)| wanted(name, &branch))
        .collect();
    if theirs == ours {
        return Ok(branch);
    }
    // Two `fleet status` at once take turns, as fermata's writers do.
    let _writing =
        crate::source::writer_lock(dir, Vec::new).map_err(|source| FleetError::Cache {
            repo: url.to_string(),
            path: dir.display().to_string(),
            source,
        })?;
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(crate::source::callbacks())
        .prune(git2::FetchPrune::On)
        .download_tags(AutotagOption::None);
    let specs = [
        format!("+refs/heads/{SITE_BRANCH_PREFIX}*:refs/heads/{SITE_BRANCH_PREFIX}*"),
        format!("+refs/heads/{branch}:refs/heads/{branch}"),
    ];
    remote
        .fetch(&specs, Some(&mut opts), None)
        .map_err(remote_err("fetch"))?;
    Ok(branch)
}

/// A ref the fleet view reads: a site's status branch, or the watched branch.
fn wanted(name: &str, branch: &str) -> bool {
    name.strip_prefix("refs/heads/").is_some_and(|b| {
        b == branch
            || b.strip_prefix(SITE_BRANCH_PREFIX)
                .is_some_and(|site| !site.is_empty())
    })
}

/// The branch HEAD names.
fn head_branch(repo: &Repository) -> Option<String> {
    let head = repo.find_reference("HEAD").ok()?;
    let target = head.symbolic_target().ok()??.to_string();
    target.strip_prefix("refs/heads/").map(str::to_string)
}

/// Every site's report of `branch`, from the repository at `git_dir`. A
/// site branch that cannot be read is reported so (`error`), not skipped:
/// a fleet view that drops a site hides exactly the site to look at.
pub fn read(git_dir: &Path, branch: &str) -> Result<FleetInput, FleetError> {
    let shown = git_dir.display().to_string();
    let repo = Repository::open(git_dir).map_err(git(&shown, "open"))?;
    let head = repo
        .find_reference(&format!("refs/heads/{branch}"))
        .ok()
        .and_then(|r| r.peel_to_commit().ok())
        .map(|c| c.id().to_string());
    let mut sites = Vec::new();
    let refs = repo
        .references_glob(&format!("refs/heads/{SITE_BRANCH_PREFIX}*"))
        .map_err(git(&shown, "list site branches"))?;
    for r in refs.flatten() {
        let Some(site) = r
            .name()
            .ok()
            .and_then(|n| n.strip_prefix("refs/heads/"))
            .and_then(|n| n.strip_prefix(SITE_BRANCH_PREFIX))
            .filter(|s| !s.is_empty() && !s.contains('/'))
            .map(str::to_string)
        else {
            continue;
        };
        let mut report = SiteReport {
            site: site.clone(),
            ..SiteReport::default()
        };
        match r.peel_to_commit() {
            Ok(tip) => {
                report.status_commit = Some(tip.id().to_string());
                report.reported_at =
                    DateTime::<Utc>::from_timestamp(tip.committer().when().seconds(), 0);
                report.reconciled = reconciled(&repo, tip.id(), branch);
            }
            Err(e) => report.error = Some(format!("cannot read {SITE_BRANCH_PREFIX}{site}: {e}")),
        }
        let statuses = StatusRepo::new(git_dir.to_path_buf(), None, "", Some(site.clone())).read();
        match statuses {
            Ok(all) => {
                report.statuses = all
                    .into_iter()
                    .filter(|s| s.source.branch == branch)
                    .collect()
            }
            Err(e) => report.error = Some(crate::errors::chain(&e)),
        }
        sites.push(report);
    }
    Ok(FleetInput {
        branch: branch.to_string(),
        head,
        sites,
    })
}

/// The source commit of the newest status commit (first parents from
/// `tip`) whose `Fermata-Source:` trailer names `branch`.
fn reconciled(repo: &Repository, tip: Oid, branch: &str) -> Option<String> {
    let mut walk = repo.revwalk().ok()?;
    walk.push(tip).ok()?;
    walk.simplify_first_parent().ok()?;
    for id in walk.take(MAX_WALK).flatten() {
        let Ok(commit) = repo.find_commit(id) else {
            continue;
        };
        let message = String::from_utf8_lossy(commit.message_bytes()).into_owned();
        if let Some(c) = source_trailer(&message, branch) {
            return Some(c);
        }
    }
    None
}

/// The commit of a `Fermata-Source: <branch>@<commit>` line for `branch`.
fn source_trailer(message: &str, branch: &str) -> Option<String> {
    message.lines().find_map(|l| {
        let (b, commit) = l
            .strip_prefix("Fermata-Source: ")?
            .trim()
            .rsplit_once('@')?;
        (b == branch).then(|| commit.to_string())
    })
}

fn git<'a>(repo: &'a str, context: &'static str) -> impl FnOnce(git2::Error) -> FleetError + 'a {
    move |source| FleetError::Git {
        repo: repo.to_string(),
        context: context.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_name_the_branch_reconciled() {
        let msg = "plant-a main@3f2a1c0: 1 installed\n\nFermata-Source: main@3f2a1c0aa\nFermata-Site: plant-a\n";
        assert_eq!(source_trailer(msg, "main").as_deref(), Some("3f2a1c0aa"));
        assert_eq!(source_trailer(msg, "release"), None);
        let odd = "x\n\nFermata-Source: team@x/main@abc\n";
        assert_eq!(source_trailer(odd, "team@x/main").as_deref(), Some("abc"));
    }

    #[test]
    fn only_site_branches_and_the_watched_one_are_fetched() {
        for (name, want) in [
            ("refs/heads/fermata/sites/plant-a", true),
            ("refs/heads/main", true),
            ("refs/heads/fermata/sites/", false),
            ("refs/heads/fermata/status", false),
            ("refs/heads/release", false),
            ("refs/notes/fermata-sites/plant-a", false),
        ] {
            assert_eq!(wanted(name, "main"), want, "{name}");
        }
    }
}
