//! The `command:` synthesizer: a KRM function. The command runs in a temp
//! copy of the synthesizer's folder, reads a `ResourceList` (functionConfig =
//! env, items = bound objects) on stdin and must print one on stdout within
//! the timeout; it is killed with its whole process group after it.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{json, Value};
use wait_timeout::ChildExt;

use super::{Resource, SynthError};
use crate::model::{Composition, Synthesizer};
use crate::source::{Entry, Snapshot};

/// What of stderr an error carries: enough to see the failure, bounded.
const STDERR_TAIL: usize = 2048;

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
    let input = json!({
        "apiVersion": "config.kubernetes.io/v1",
        "kind": "ResourceList",
        "functionConfig": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": synth.name, "annotations": {crate::model::wellknown::COMPOSITION: comp.id}},
            "data": comp.env,
        },
        "items": items,
    });
    let input = serde_yaml::to_string(&input).map_err(|e| fail(e.to_string(), ""))?;

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
        .envs(&comp.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}"), ""))?;
    let pgid = Pid::from_raw(child.id() as i32);

    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        // A command that does not read its input gets EPIPE: not our failure.
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let mut stdout = child.stdout.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let mut stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });

    let status = child
        .wait_timeout(synth.timeout)
        .map_err(|e| fail(format!("cannot wait: {e}"), ""))?;
    // Whatever happened, nothing of the group may outlive the synthesis: a
    // leftover child would hold the pipes open and the readers forever.
    let _ = killpg(pgid, Signal::SIGKILL);
    let status = match status {
        Some(s) => Some(s),
        None => {
            let _ = child.wait();
            None
        }
    };
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = stderr_tail(&err_reader.join().unwrap_or_default());

    let Some(status) = status else {
        return Err(fail(
            format!(
                "killed after its timeout of {}",
                humantime::format_duration(synth.timeout)
            ),
            &stderr,
        ));
    };
    if !status.success() {
        return Err(fail(format!("exited with {status}"), &stderr));
    }
    let list: ResourceList = serde_yaml::from_slice(&stdout)
        .map_err(|e| fail(format!("printed no valid ResourceList: {e}"), &stderr))?;
    if list.kind != "ResourceList" {
        return Err(fail(
            format!("printed kind {:?}, expected ResourceList", list.kind),
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
            format!("reported errors: {}", errors.join("; ")),
            &stderr,
        ));
    }
    list.items
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, v)| {
            let object =
                serde_json::to_value(&v).map_err(|e| fail(format!("items[{i}]: {e}"), &stderr))?;
            Resource::new(object).map_err(|m| fail(format!("items[{i}]: {m}"), &stderr))
        })
        .collect()
}

fn stderr_tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
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
