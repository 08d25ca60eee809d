//! The `command:` synthesizer: a KRM function. The command runs in a temp
//! copy of the synthesizer's folder, reads a `ResourceList` (functionConfig =
//! env, items = bound objects) on stdin and must print one on stdout.
//!
//! Rendered for a site, the env is the site's env under the composition's
//! own (which wins), in `functionConfig.data` and in the process environment
//! alike, plus `FERMATA_SITE`; the functionConfig's annotations
//! `fermata.dev/site` and `fermata.dev/site-labels` (a JSON object) carry the
//! site's name and labels. Without a site the input is exactly as before.
//!
//! The repository, not the operator, chooses the command, so everything it
//! can cost fermata is bounded:
//! - Time: one deadline (the synthesizer's `timeout`) covers writing stdin,
//!   reading stdout and stderr, and the exit. The pipes are polled, never read
//!   to their end blindly, so a process that keeps one open cannot hold the
//!   render past the deadline.
//! - Memory: stdout up to [`Limits::max_output`](super::Limits) (the command
//!   is killed past it); of stderr only the last [`STDERR_TAIL`] bytes,
//!   kept while streaming.
//! - Processes: when the command exits, times out or prints too much,
//!   everything it started is killed: its process group, every process whose
//!   environment carries this render's `FERMATA_RENDER_ID`, and their
//!   descendants. The variable is what finds a process that left the group
//!   (`setsid`, a double fork reparenting it to init): the environment is
//!   inherited through fork, exec, setsid and reparenting, and reading
//!   `/proc/<pid>/environ` of one's own processes needs no privilege. The
//!   alternatives do not work unprivileged or in a default container: a
//!   cgroup v2 subtree needs a delegated, writable cgroup; a PID namespace
//!   needs user namespaces; `PR_SET_CHILD_SUBREAPER` applies to a whole
//!   process, so it needs a supervising process of our own (a re-exec of the
//!   binary, which library callers do not have). What still escapes: a
//!   process that clears its environment after its parent died. It is not
//!   killed, but the render does not wait for it past the deadline.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{json, Value};
use wait_timeout::ChildExt;

use super::{Limits, Resource, SynthError};
use crate::model::{Composition, Synthesizer};
use crate::source::{Entry, Snapshot};

/// What of stderr is kept (and an error carries): enough to see the
/// failure, bounded however much the command writes.
const STDERR_TAIL: usize = 2048;

/// The variable every process of one render inherits, so the render can find
/// and kill them all (see the module comment).
pub const RENDER_ID_VAR: &str = "FERMATA_RENDER_ID";

/// How often the exit of a command is checked while a pipe of it is still
/// open: it only delays noticing an exit behind a leftover holding a pipe.
const EXIT_CHECK: Duration = Duration::from_millis(50);

/// Read and write size: one pipe buffer.
const CHUNK: usize = 64 * 1024;

/// Reads per pipe per poll: a pipe that never runs dry must not starve the
/// others or the deadline.
const READS_PER_POLL: usize = 16;

/// How long reaping a killed command may take (it is SIGKILLed: only a
/// process stuck in the kernel takes longer, and then it is left a zombie).
const REAP: Duration = Duration::from_secs(5);

/// Scans of the process table while killing: each kills what the previous
/// one found, so only a process forking faster than a scan needs more.
const KILL_ROUNDS: usize = 100;

/// Messages quote what the command printed: this much of it.
const QUOTED: usize = 1024;

#[derive(Deserialize)]
struct ResourceList {
    kind: String,
    #[serde(default)]
    items: Vec<serde_yaml::Value>,
    #[serde(default)]
    results: Vec<KrmResult>,
}

#[derive(Deserialize)]
struct KrmResult {
    #[serde(default)]
    message: String,
    #[serde(default)]
    severity: String,
}

pub(super) fn render(
    snap: &Snapshot,
    synth: &Synthesizer,
    argv: &[String],
    comp: &Composition,
    limits: &Limits,
) -> Result<Vec<Resource>, SynthError> {
    let shown = argv.join(" ");
    let fail = |message: String, stderr: &str| SynthError::Command {
        command: shown.clone(),
        message,
        stderr: stderr.to_string(),
    };
    let work =
        tempfile::tempdir().map_err(|e| fail(format!("cannot create a temp dir: {e}"), ""))?;
    copy_folder(snap, &synth.dir, work.path()).map_err(|e| fail(e, ""))?;

    let items: Vec<Value> = comp
        .bindings
        .iter()
        .map(|(key, b)| {
            let mut o = b.object.clone();
            if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                let ann = meta.entry("annotations").or_insert_with(|| json!({}));
                if let Some(ann) = ann.as_object_mut() {
                    ann.insert(crate::model::wellknown::BINDING.into(), json!(key));
                }
            }
            o
        })
        .collect();
    let env = comp.synthesis_env();
    let mut annotations = json!({crate::model::wellknown::COMPOSITION: comp.id});
    if let Some(site) = &comp.site {
        // Annotations, not new ResourceList fields: a strict KRM reader
        // refuses fields it does not know, none refuses annotations.
        annotations[crate::model::wellknown::SITE] = json!(site.name);
        annotations[crate::model::wellknown::SITE_LABELS] =
            json!(serde_json::to_string(&site.labels).unwrap_or_default());
    }
    let input = json!({
        "apiVersion": "config.kubernetes.io/v1",
        "kind": "ResourceList",
        "functionConfig": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": synth.name, "annotations": annotations},
            "data": env,
        },
        "items": items,
    });
    let input = serde_yaml::to_string(&input).map_err(|e| fail(e.to_string(), ""))?;

    // Random, not a counter: a leftover of an earlier fermata with the same
    // pid (pid 1 in every container) must not share it.
    let render_id = format!("{:016x}", rand::random::<u64>());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(work.path())
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", work.path())
        .env("FERMATA_COMPOSITION", comp.id.to_string())
        .envs(
            comp.site
                .as_ref()
                .map(|s| ("FERMATA_SITE", s.name.as_str())),
        )
        .envs(&env)
        // After the user's env, so a synthesisEnv entry cannot hide it.
        .env(RENDER_ID_VAR, &render_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: one signal for all that stays in it.
        .process_group(0);
    let deadline = Instant::now() + synth.timeout;
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}"), ""))?;
    let tree = Tree {
        leader: Pid::from_raw(child.id() as i32),
        render_id,
    };
    let result = communicate(&mut child, &tree, input.into_bytes(), deadline, limits);
    if !matches!(result, Ok((Ended::Exited(_), _, _))) {
        // Still running (past its deadline or its output limit, or its
        // pipes failed): kill all of it and reap it (SIGKILL is at once).
        tree.kill();
        let _ = child.wait_timeout(REAP);
    }
    let (ended, stdout, stderr) = result.map_err(|e| fail(e, ""))?;
    let status = match ended {
        Ended::Exited(status) => status,
        Ended::TimedOut => {
            return Err(fail(
                format!(
                    "killed after its timeout of {}",
                    humantime::format_duration(synth.timeout)
                ),
                &stderr,
            ))
        }
        Ended::TooMuch => {
            return Err(fail(
                format!(
                    "killed: printed more than {} on stdout (--max-render-output)",
                    bytesize::ByteSize(limits.max_output).display().iec()
                ),
                &stderr,
            ))
        }
    };
    if !status.success() {
        return Err(fail(format!("exited with {status}"), &stderr));
    }
    let list: ResourceList = serde_yaml::from_slice(&stdout).map_err(|e| {
        fail(
            format!("printed no valid ResourceList: {}", quoted(&e.to_string())),
            &stderr,
        )
    })?;
    if list.kind != "ResourceList" {
        return Err(fail(
            format!(
                "printed kind {}, expected ResourceList",
                quoted(&format!("{:?}", list.kind))
            ),
            &stderr,
        ));
    }
    let errors: Vec<&str> = list
        .results
        .iter()
        .filter(|r| r.severity == "error")
        .map(|r| r.message.as_str())
        .collect();
    if !errors.is_empty() {
        return Err(fail(
            format!("reported errors: {}", quoted(&errors.join("; "))),
            &stderr,
        ));
    }
    list.items
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, v)| {
            let object = serde_json::to_value(&v)
                .map_err(|e| fail(format!("items[{i}]: {}", quoted(&e.to_string())), &stderr))?;
            Resource::new(object).map_err(|m| fail(format!("items[{i}]: {m}"), &stderr))
        })
        .collect()
}

/// How the command's run ended.
#[derive(Debug)]
enum Ended {
    /// It exited, and its output pipes closed.
    Exited(ExitStatus),
    /// The deadline passed first.
    TimedOut,
    /// It printed more than `--max-render-output` on stdout.
    TooMuch,
}

/// Feeds stdin, collects stdout and the tail of stderr until the command
/// has exited and every process holding its pipes is gone, or the deadline
/// passes, or stdout is over its limit. Returns what ended it, stdout and the
/// stderr tail. On exit, whatever the command left running is killed here,
/// so that its pipes close.
fn communicate(
    child: &mut Child,
    tree: &Tree,
    input: Vec<u8>,
    deadline: Instant,
    limits: &Limits,
) -> Result<(Ended, Vec<u8>, String), String> {
    let mut pipes = Pipes::new(child, input, limits.max_output)?;
    let mut exited = None;
    let ended = loop {
        if exited.is_none() {
            if let Some(status) = child.try_wait().map_err(|e| format!("cannot wait: {e}"))? {
                tree.kill();
                exited = Some(status);
            }
        }
        let now = Instant::now();
        if pipes.closed() {
            match exited {
                Some(status) => break Ended::Exited(status),
                // Still reading its input: go on feeding it.
                None if pipes.stdin.is_some() => {}
                None => {
                    // Output closed, input given, still running: only the exit is left to wait for.
                    match child
                        .wait_timeout(deadline.saturating_duration_since(now))
                        .map_err(|e| format!("cannot wait: {e}"))?
                    {
                        Some(status) => {
                            tree.kill();
                            break Ended::Exited(status);
                        }
                        None => break Ended::TimedOut,
                    }
                }
            }
        }
        if now >= deadline {
            break Ended::TimedOut;
        }
        if !pipes.step((deadline - now).min(EXIT_CHECK))? {
            break Ended::TooMuch;
        }
    };
    let (stdout, stderr) = pipes.finish();
    Ok((ended, stdout, stderr))
}

/// The parent's ends of the command's three pipes, non-blocking.
struct Pipes {
    stdin: Option<ChildStdin>,
    input: Vec<u8>,
    written: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out: Vec<u8>,
    max_output: u64,
    tail: VecDeque<u8>,
}

#[derive(Clone, Copy)]
enum Pipe {
    In,
    Out,
    Err,
}

impl Pipes {
    fn new(child: &mut Child, input: Vec<u8>, max_output: u64) -> Result<Pipes, String> {
        let pipes = Pipes {
            stdin: child.stdin.take().filter(|_| !input.is_empty()),
            input,
            written: 0,
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            out: Vec::new(),
            max_output,
            tail: VecDeque::with_capacity(STDERR_TAIL),
        };
        let fds = [
            pipes.stdin.as_ref().map(|p| p.as_fd()),
            pipes.stdout.as_ref().map(|p| p.as_fd()),
            pipes.stderr.as_ref().map(|p| p.as_fd()),
        ];
        for fd in fds.into_iter().flatten() {
            fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .map_err(|e| format!("cannot set up its pipes: {e}"))?;
        }
        Ok(pipes)
    }

    /// Whether stdout and stderr are both at their end.
    fn closed(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    /// Waits up to `wait` for a pipe to be ready and serves it; `false` when
    /// stdout went over its limit.
    fn step(&mut self, wait: Duration) -> Result<bool, String> {
        let mut ready = Vec::with_capacity(3);
        {
            let mut fds = Vec::with_capacity(3);
            let mut which = Vec::with_capacity(3);
            if let Some(p) = &self.stdin {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLOUT));
                which.push(Pipe::In);
            }
            if let Some(p) = &self.stdout {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                which.push(Pipe::Out);
            }
            if let Some(p) = &self.stderr {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
                which.push(Pipe::Err);
            }
            // Under EXIT_CHECK, so it fits the u16 of milliseconds.
            let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("cannot poll its pipes: {e}")),
            }
            for (fd, pipe) in fds.iter().zip(which) {
                if fd.revents().is_some_and(|r| !r.is_empty()) {
                    ready.push(pipe);
                }
            }
        }
        let mut buf = [0u8; CHUNK];
        for pipe in ready {
            match pipe {
                Pipe::In => self.write_input(),
                Pipe::Out => {
                    for _ in 0..READS_PER_POLL {
                        match read_some(&mut self.stdout, &mut buf) {
                            Some(n) => {
                                if (self.out.len() + n) as u64 > self.max_output {
                                    return Ok(false);
                                }
                                self.out.extend_from_slice(&buf[..n]);
                            }
                            None => break,
                        }
                    }
                }
                Pipe::Err => {
                    for _ in 0..READS_PER_POLL {
                        match read_some(&mut self.stderr, &mut buf) {
                            Some(n) => {
                                let keep = &buf[n.saturating_sub(STDERR_TAIL)..n];
                                let over =
                                    (self.tail.len() + keep.len()).saturating_sub(STDERR_TAIL);
                                self.tail.drain(..over);
                                self.tail.extend(keep);
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        Ok(true)
    }

    fn write_input(&mut self) {
        let Some(p) = self.stdin.as_mut() else { return };
        match p.write(&self.input[self.written..]) {
            Ok(n) => {
                self.written += n;
                if self.written == self.input.len() {
                    // Closing it is the end of input.
                    self.stdin = None;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // A command that does not read its input gets EPIPE: not our failure.
            Err(_) => self.stdin = None,
        }
    }

    /// stdout, and the stderr tail as text.
    fn finish(self) -> (Vec<u8>, String) {
        let (a, b) = self.tail.as_slices();
        let tail = String::from_utf8_lossy(&[a, b].concat()).trim().to_string();
        (self.out, tail)
    }
}

/// One non-blocking read: `Some(n)` bytes read, `None` when nothing is there
/// now. At the end (or an error) the pipe is closed.
fn read_some<R: Read>(pipe: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    let p = pipe.as_mut()?;
    match p.read(buf) {
        Ok(0) => {
            *pipe = None;
            None
        }
        Ok(n) => Some(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            None
        }
        Err(_) => {
            *pipe = None;
            None
        }
    }
}

/// Text the command printed, cut to [`QUOTED`] characters: a parse error
/// quotes the value it choked on, which can be all of stdout.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTED) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// Everything one render started (see the module comment).
struct Tree {
    /// The command, leader of its process group.
    leader: Pid,
    /// The value of [`RENDER_ID_VAR`] it and its descendants inherit.
    render_id: String,
}

impl Tree {
    /// SIGKILLs the process group and every process that belongs to the
    /// render, scanning `/proc` again until a scan finds nothing new alive:
    /// a process forks no more once killed, so a child it made before that
    /// is found by the next scan.
    fn kill(&self) {
        let _ = killpg(self.leader, Signal::SIGKILL);
        let mut killed = HashSet::new();
        for _ in 0..KILL_ROUNDS {
            let new: Vec<i32> = self
                .members()
                .into_iter()
                .filter(|p| killed.insert(*p))
                .collect();
            if new.is_empty() {
                return;
            }
            for pid in new {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        tracing::warn!(
            render = %self.render_id,
            "processes of a command synthesizer were still forking after {KILL_ROUNDS} rounds of kills"
        );
    }

    /// Live processes of the render: in the process group, carrying the
    /// render id, or descending from one of those.
    fn members(&self) -> HashSet<i32> {
        let me = std::process::id() as i32;
        let Ok(all) = procfs::process::all_processes() else {
            return HashSet::new();
        };
        let procs: Vec<_> = all
            .filter_map(Result::ok)
            .filter_map(|p| p.stat().ok().map(|s| (p, s)))
            .filter(|(_, s)| s.pid != me && s.state != 'Z')
            .collect();
        let leader = self.leader.as_raw();
        let mut members: HashSet<i32> = procs
            .iter()
            .filter(|(p, s)| {
                // A pgid is not reused while a process is in its group.
                s.pgrp == leader
                    || p.environ().is_ok_and(|env| {
                        env.get(OsStr::new(RENDER_ID_VAR))
                            .is_some_and(|v| v.as_os_str() == OsStr::new(&self.render_id))
                    })
            })
            .map(|(_, s)| s.pid)
            .collect();
        loop {
            let before = members.len();
            for (_, s) in &procs {
                if members.contains(&s.ppid) {
                    members.insert(s.pid);
                }
            }
            if members.len() == before {
                return members;
            }
        }
    }
}

/// Writes the files of repository folder `dir` under `to`, keeping the
/// executable bit; symlinks inside the repository become copies.
fn copy_folder(snap: &Snapshot, dir: &str, to: &std::path::Path) -> Result<(), String> {
    for (path, entry) in snap.under(dir) {
        let rel = if dir.is_empty() {
            path
        } else {
            &path[dir.len() + 1..]
        };
        let dest = to.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let (data, exec) = match entry {
            Entry::File { data, executable } => (&data[..], *executable),
            Entry::Symlink { .. } => {
                let (d, n) = crate::source::split(path);
                snap.resolve(d, n).map_err(|e| format!("{path}: {e}"))?;
                match snap.read(path) {
                    Some(d) => (d, false),
                    None => continue,
                }
            }
            Entry::Oversize { size } => {
                return Err(format!(
                    "{path}: file is {size} bytes, over the 4 MiB limit"
                ))
            }
        };
        std::fs::write(&dest, data).map_err(|e| format!("{}: {e}", dest.display()))?;
        if exec {
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", dest.display()))?;
        }
    }
    Ok(())
}
