//! The floor under a window's opening, measured in the same run: what the
//! opening cannot do without, done by plain calls and plain `git`, so that
//! the opening is compared with the work it must do and not only with the
//! staging pass before it.
//!
//! - **Switches**: per composition, the rename of a prepared symlink over
//!   `current` and one line appended to its history (the directory
//!   target's layout, `src/target/dir.rs`), then one `syncfs`: the durable
//!   switch the issue keeps. No checks, reads or threads.
//! - **Status**: the commit the opening wrote (every composition's status
//!   file changed), written again by `git fast-import` on its parent, into
//!   a copy of the status remote taken before the opening (so none of its
//!   objects exist there yet). DESIGN.md keeps one commit per pass.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Builds, untimed, what staging leaves for each of `ids` (a prepared
/// `.fermata/next` symlink, an empty history), syncs it, then times the
/// switches and their one `syncfs`.
pub(crate) fn switches(dir: &Path, ids: &[String]) -> anyhow::Result<Duration> {
    let state = |c: char| format!(".fermata/states/{}", c.to_string().repeat(64));
    for id in ids {
        let meta = dir.join(id).join(".fermata");
        std::fs::create_dir_all(&meta)?;
        std::os::unix::fs::symlink(state('b'), meta.join("next"))?;
        std::fs::write(meta.join("applied"), "")?;
    }
    crate::settle();
    let line = format!(
        "{} main@{} 2026-11-20T02:00:00Z\n",
        "b".repeat(64),
        "c".repeat(40)
    );
    let t = Instant::now();
    for id in ids {
        let comp = dir.join(id);
        std::fs::rename(comp.join(".fermata/next"), comp.join("current"))?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(comp.join(".fermata/applied"))?
            .write_all(line.as_bytes())?;
    }
    let root = std::fs::File::open(dir)?;
    nix::unistd::syncfs(&root)?;
    Ok(t.elapsed())
}

/// A copy of the status remote `remote` at `into` (no shared objects), to
/// be taken before the opening writes there.
pub(crate) fn copy_remote(remote: &Path, into: &Path) -> anyhow::Result<()> {
    let parent = into.parent().context("copy's parent")?;
    let name = into.file_name().context("copy's name")?;
    crate::git(
        parent,
        &[
            "clone",
            "-q",
            "--bare",
            "--no-local",
            &remote.display().to_string(),
            &name.to_string_lossy(),
        ],
    )
}

/// Times `git fast-import` writing `branch`'s tip in `remote` (its files,
/// as one commit on its parent) into `copy`.
pub(crate) fn status_commit(remote: &Path, copy: &Path, branch: &str) -> anyhow::Result<Duration> {
    let repo = git2::Repository::open(remote)?;
    let tip = repo.find_reference(branch)?.peel_to_commit()?;
    let parent = tip.parent_id(0)?;
    // Every file of the tip, as fast-import reads it (untimed).
    let mut input = Vec::new();
    writeln!(
        input,
        "commit refs/heads/floor\ncommitter bench <bench@fermata.invalid> 0 +0000\ndata 5\nfloor\nfrom {parent}"
    )?;
    let mut files = 0;
    tip.tree()?
        .walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if let Some(Ok(blob)) =
                (entry.kind() == Some(git2::ObjectType::Blob)).then(|| repo.find_blob(entry.id()))
            {
                let path = format!("{dir}{}", entry.name().unwrap_or_default());
                let _ = writeln!(input, "M 100644 inline {path}\ndata {}", blob.size());
                input.extend_from_slice(blob.content());
                input.push(b'\n');
                files += 1;
            }
            git2::TreeWalkResult::Ok
        })?;
    let t = Instant::now();
    let mut child = Command::new("git")
        .current_dir(copy)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("git fast-import")?;
    // A kill path: dropped with the child's stdin closed, the import ends.
    let mut stdin = child.stdin.take().context("fast-import's stdin")?;
    stdin.write_all(&input)?;
    drop(stdin);
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "git fast-import of {files} files: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}
