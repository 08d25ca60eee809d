//! Artifacts delivered to the cluster at stage (issue 15 point 2): a Target
//! with `spec.kubernetes.artifacts: {claim: models, ...}` gets every
//! artifact of a staged composition written to that PersistentVolumeClaim,
//! at `sha256/<digest>` (what `${artifact.NAME.path}` expands to), before
//! the composition counts as staged.
//!
//! How: one Job per claim and digest (`fermata-fetch-<hash>`), mounting the
//! claim at `/artifacts`, running [`SCRIPT`] in a small image (busybox by
//! default: `sh`, `wget`, `sha256sum`, `mv`). It downloads from fermata's
//! own store (`<storeUrl>/artifacts/sha256/<digest>`, served on `--listen`
//! to bearers of the `--artifact-token-file` token, which the Job reads
//! from a Secret the operator creates in the target namespace) or, with
//! `direct: true`, from the artifact's own URL; it checks size and sha256,
//! and only then renames the file into place (a partial or corrupt file
//! never has the final name; a file already there and whole is kept). Its
//! failure message goes to `/dev/termination-log`, so status quotes it.
//!
//! What is on a claim is recorded in a ConfigMap `fermata-artifacts-<claim>`
//! (one key per digest, the size as value), written by merge patch so
//! compositions sharing a claim only add keys: a recorded digest is not
//! fetched again. A Job that completed is recorded and deleted; a Job that
//! failed is kept (with `ttlSecondsAfterFinished` of an hour, after which
//! Kubernetes deletes it and the next stage tries again) and the stage fails
//! naming the artifact and the verifier's message.
//!
//! Garbage collection: at the end of a pass that recorded a state (once
//! per pass, [`Target::checkpoint`](crate::target::Target::checkpoint)) or
//! after a delete, what the ledger records and no composition of the
//! namespace needs is removed from the claim.
//! Needed ([`keep_set`]) is every artifact of an inventory record's applied
//! state, staged state and previous state (the issue names applied and
//! staged; previous too, because `Target::rollback` applies it again), of a
//! stage kept in memory, and of a delivery under way. One Job per claim at a
//! time (`fermata-gc-<hash>`, same image, [`GC_SCRIPT`]) runs `rm -f` on
//! the garbage; it is not waited for: a later collection finds it done,
//! removes its keys from the ledger (merge patch with nulls) and deletes it.
//! A failed one is logged and kept (an hour's TTL, like a failed delivery)
//! and fails nothing; its digests keep their keys, and a stage needing one
//! of them fetches it again (the fetch keeps a whole file). A stage needing
//! a digest a running GC Job removes waits for it.
//!
//! The decisions here are pure; the executor in [`super`] reads and writes.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::model::types::ClaimSpec;
use crate::model::{artifact_claim_path, Artifact, Digest};

/// Where Jobs mount the claim.
pub const MOUNT: &str = "/artifacts";
/// Image of the Jobs unless the Target names one.
pub const DEFAULT_IMAGE: &str = "busybox:1.37";
/// Secret holding the store's token (key `token`) unless the Target names one.
pub const DEFAULT_TOKEN_SECRET: &str = "fermata-artifact-token";
/// Label on delivery Jobs, valued with the claim.
pub const JOB_LABEL: &str = "fermata.dev/artifact-claim";

/// Label on garbage collection Jobs, valued with the claim.
pub const GC_LABEL: &str = "fermata.dev/artifact-gc";
/// Annotation of a GC Job listing its digests, space-separated.
pub const GC_ANNOTATION: &str = "fermata.dev/garbage";
/// At most this many digests per GC Job (its annotation and environment
/// stay small); the rest go at a later pass.
pub const GC_BATCH: usize = 500;

/// The download, check and rename, as `sh -c` runs it; parameters come in
/// the environment (`FERMATA_URL`, `FERMATA_SHA256`, `FERMATA_SIZE` (may
/// be empty), `FERMATA_DEST`, `FERMATA_TOKEN` when from the store).
/// `tests/kube_staging.rs` runs the same steps in Rust for the fake.
pub const SCRIPT: &str = r#"set -eu
dest="$FERMATA_DEST"
fail() { echo "$1" | tee /dev/termination-log >&2; rm -f "$tmp"; exit 1; }
tmp="$dest.part.$(hostname)"
if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$FERMATA_SHA256" ]; then exit 0; fi
mkdir -p "$(dirname "$dest")"
if [ -n "${FERMATA_TOKEN:-}" ]; then
  wget -q -O "$tmp" --header "Authorization: Bearer $FERMATA_TOKEN" "$FERMATA_URL" || fail "download of $FERMATA_URL failed"
else
  wget -q -O "$tmp" "$FERMATA_URL" || fail "download of $FERMATA_URL failed"
fi
size="$(wc -c < "$tmp" | tr -d ' ')"
if [ -n "${FERMATA_SIZE:-}" ] && [ "$size" != "$FERMATA_SIZE" ]; then fail "size mismatch: got $size bytes, expected $FERMATA_SIZE"; fi
got="$(sha256sum "$tmp" | cut -d' ' -f1)"
if [ "$got" != "$FERMATA_SHA256" ]; then fail "sha256 mismatch: got $got, expected $FERMATA_SHA256"; fi
mv -f "$tmp" "$dest"
"#;

/// The ConfigMap recording what is on `claim`.
pub fn ledger_name(claim: &str) -> String {
    let name = format!("fermata-artifacts-{claim}");
    if name.len() <= 253 {
        name
    } else {
        format!(
            "fermata-artifacts-h-{}",
            &Digest::of(claim.as_bytes()).to_hex()[..40]
        )
    }
}

/// The Job delivering `digest` to `claim`: one per pair, stable, so a
/// stage run again (after a crash) finds it again.
pub fn job_name(claim: &str, digest: &Digest) -> String {
    let key = format!("{claim}\n{}", digest.to_hex());
    format!(
        "fermata-fetch-{}",
        &Digest::of(key.as_bytes()).to_hex()[..24]
    )
}

/// Where the Job downloads `a` from.
pub fn source_url(spec: &ClaimSpec, a: &Artifact) -> Result<String, String> {
    if spec.direct {
        let remote = a.repo_path.is_none()
            && (a.url.starts_with("http://") || a.url.starts_with("https://"));
        if !remote {
            return Err(format!(
                "artifact {} ({}) cannot be downloaded by the cluster (`direct: true` needs an \
                 http(s) URL): set `storeUrl` on the Target to serve it from fermata's store",
                a.name, a.url
            ));
        }
        return Ok(a.url.clone());
    }
    let base = spec.store_url.as_deref().unwrap_or_default();
    Ok(format!(
        "{}/artifacts/sha256/{}",
        base.trim_end_matches('/'),
        a.sha256.to_hex()
    ))
}

/// The Job writing `a` to the claim, in `namespace`.
pub fn job_object(spec: &ClaimSpec, a: &Artifact, namespace: &str) -> Result<Value, String> {
    let url = source_url(spec, a)?;
    let mut env = vec![
        json!({"name": "FERMATA_URL", "value": url}),
        json!({"name": "FERMATA_SHA256", "value": a.sha256.to_hex()}),
        json!({"name": "FERMATA_SIZE", "value": a.size.map(|s| s.to_string()).unwrap_or_default()}),
        json!({"name": "FERMATA_DEST", "value": format!("{MOUNT}/{}", artifact_claim_path(&a.sha256))}),
    ];
    if !spec.direct {
        env.push(
            json!({"name": "FERMATA_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": spec.token_secret.as_deref().unwrap_or(DEFAULT_TOKEN_SECRET),
            "key": "token"}}}),
        );
    }
    Ok(claim_job(
        spec,
        namespace,
        (JOB_LABEL, job_name(&spec.claim, &a.sha256)),
        json!({"fermata.dev/artifact": a.name, "fermata.dev/sha256": a.sha256.to_hex()}),
        ("fetch", SCRIPT),
        env,
    ))
}

/// A Job working on the claim (a delivery or a collection): `script` run by
/// `sh` in the Target's image with the claim mounted at [`MOUNT`], labelled
/// `label: <claim>`, retried twice, kept an hour after it finished (a failed
/// one says why until then, and blocks the same work being started again).
fn claim_job(
    spec: &ClaimSpec,
    namespace: &str,
    (label, name): (&str, String),
    annotations: Value,
    (container, script): (&str, &str),
    env: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {label: spec.claim},
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": {label: spec.claim}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": container,
                        "image": spec.image.as_deref().unwrap_or(DEFAULT_IMAGE),
                        "command": ["sh", "-c", script],
                        "env": env,
                        "volumeMounts": [{"name": "claim", "mountPath": MOUNT}],
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }],
                    "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": spec.claim}}],
                },
            },
        },
    })
}

/// Where a delivery Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    /// Why, in the Job's (or its pods') words.
    Failed(String),
}

/// The state of `job`; `pods` are its pods, whose termination messages say
/// why better than the Job's own condition ("reached the backoff limit").
pub fn job_state(job: &Value, pods: &[Value]) -> JobState {
    let condition = |t: &str| {
        job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"].as_str() == Some(t) && c["status"].as_str() == Some("True"))
    };
    if condition("Complete").is_some() {
        return JobState::Done;
    }
    let Some(failed) = condition("Failed") else {
        return JobState::Running;
    };
    let from_pods = pods
        .iter()
        .flat_map(|p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c["state"]["terminated"]["message"].as_str())
        .map(str::trim)
        .find(|m| !m.is_empty());
    JobState::Failed(
        from_pods
            .or_else(|| failed["message"].as_str())
            .or_else(|| failed["reason"].as_str())
            .unwrap_or("failed")
            .to_string(),
    )
}

/// What a failed delivery says in status.
pub fn failure_message(a: &Artifact, claim: &str, why: &str) -> String {
    format!(
        "artifact {} (sha256 {}) was not delivered to claim {claim}: {why}",
        a.name,
        a.sha256.short()
    )
}

/// The artifacts one inventory record's states name (see [`keep_set`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordArtifacts {
    pub applied: Vec<Digest>,
    pub staged: Vec<Digest>,
    /// Kept for `Target::rollback`, which applies the previous state again.
    pub previous: Vec<Digest>,
    /// A staged state whose artifacts the record does not list (written
    /// before it did): what it needs is unknown, so nothing is collected.
    pub staged_unknown: bool,
}

/// What must stay on the claim: the artifacts of the applied, staged and
/// previous states of every record, and `busy` (stages and deliveries
/// under way). `None` when a record cannot say what it needs: then nothing
/// is garbage.
pub fn keep_set<'a>(
    records: impl IntoIterator<Item = &'a RecordArtifacts>,
    busy: impl IntoIterator<Item = Digest>,
) -> Option<BTreeSet<Digest>> {
    let mut keep: BTreeSet<Digest> = busy.into_iter().collect();
    for r in records {
        if r.staged_unknown {
            return None;
        }
        keep.extend(r.applied.iter().chain(&r.staged).chain(&r.previous));
    }
    Some(keep)
}

/// The ledger's digests not in `keep`, at most [`GC_BATCH`], sorted. A key
/// that is not a digest in fermata's spelling (64 lower-case hex digits) is
/// not fermata's to remove and is never garbage.
pub fn garbage<'a>(
    ledger: impl IntoIterator<Item = &'a String>,
    keep: &BTreeSet<Digest>,
) -> Vec<Digest> {
    let mut out: Vec<Digest> = ledger
        .into_iter()
        .filter_map(|k| k.parse::<Digest>().ok().filter(|d| d.to_hex() == *k))
        .filter(|d| !keep.contains(d))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    out.truncate(GC_BATCH);
    out
}

/// Removes each digest of `FERMATA_GARBAGE` (space-separated) from
/// `FERMATA_DIR`; anything not 64 hex digits is refused before any `rm`,
/// so nothing in the environment can name another path or run a command.
/// Globbing is off (`set -f`): a `*` stays a word, and is refused.
pub const GC_SCRIPT: &str = r#"set -euf
fail() { echo "$1" | tee "${FERMATA_LOG:-/dev/termination-log}" >&2; exit 1; }
for d in $FERMATA_GARBAGE; do
  case "$d" in
    *[!0-9a-f]*) fail "not a digest: $d" ;;
  esac
  [ "${#d}" -eq 64 ] || fail "not a digest: $d"
done
for d in $FERMATA_GARBAGE; do
  rm -f "$FERMATA_DIR/$d"
done
"#;

/// The GC Job of `claim` for `garbage`: named by both, so the same
/// garbage finds the same Job again (after a crash, or failed).
pub fn gc_job_name(claim: &str, garbage: &[Digest]) -> String {
    let mut key = claim.to_string();
    for d in garbage {
        key.push('\n');
        key.push_str(&d.to_hex());
    }
    format!("fermata-gc-{}", &Digest::of(key.as_bytes()).to_hex()[..24])
}

/// The digests a GC Job removes, from its annotation; `None` if any is not
/// a digest (not a Job of ours to finish).
pub fn gc_job_digests(job: &Value) -> Option<Vec<Digest>> {
    job["metadata"]["annotations"][GC_ANNOTATION]
        .as_str()?
        .split_whitespace()
        .map(|d| d.parse().ok())
        .collect()
}

/// The Job removing `garbage` from the claim, in `namespace`.
pub fn gc_job_object(spec: &ClaimSpec, garbage: &[Digest], namespace: &str) -> Value {
    let list = garbage
        .iter()
        .map(Digest::to_hex)
        .collect::<Vec<_>>()
        .join(" ");
    let env = vec![
        json!({"name": "FERMATA_GARBAGE", "value": list}),
        json!({"name": "FERMATA_DIR", "value": format!("{MOUNT}/sha256")}),
    ];
    claim_job(
        spec,
        namespace,
        (GC_LABEL, gc_job_name(&spec.claim, garbage)),
        json!({GC_ANNOTATION: list}),
        ("gc", GC_SCRIPT),
        env,
    )
}

/// The ledger patch forgetting `digests` (merge patch: null removes a key).
pub fn forget_patch(digests: &[Digest]) -> Value {
    let data: serde_json::Map<String, Value> =
        digests.iter().map(|d| (d.to_hex(), Value::Null)).collect();
    json!({ "data": data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(url: &str) -> Artifact {
        Artifact {
            name: "model".into(),
            url: url.into(),
            repo_path: None,
            sha256: Digest::of(b"weights"),
            size: Some(7),
        }
    }

    fn store_spec() -> ClaimSpec {
        ClaimSpec {
            claim: "models".into(),
            store_url: Some("http://fermata.fermata:8080/".into()),
            ..ClaimSpec::default()
        }
    }

    #[test]
    fn the_job_downloads_from_the_store_with_the_token_and_writes_by_digest() {
        let a = artifact("https://models.example/v3.onnx");
        let job = job_object(&store_spec(), &a, "line").expect("job");
        let hex = a.sha256.to_hex();
        assert_eq!(
            job["metadata"]["name"],
            json!(job_name("models", &a.sha256))
        );
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], json!(DEFAULT_IMAGE));
        assert_eq!(c["command"], json!(["sh", "-c", SCRIPT]));
        let env: Vec<&Value> = c["env"].as_array().expect("env").iter().collect();
        let value = |n: &str| {
            env.iter()
                .find(|e| e["name"] == json!(n))
                .map(|e| e["value"].clone())
        };
        assert_eq!(
            value("FERMATA_URL"),
            Some(json!(format!(
                "http://fermata.fermata:8080/artifacts/sha256/{hex}"
            )))
        );
        assert_eq!(value("FERMATA_SHA256"), Some(json!(hex)));
        assert_eq!(value("FERMATA_SIZE"), Some(json!("7")));
        assert_eq!(
            value("FERMATA_DEST"),
            Some(json!(format!("/artifacts/sha256/{hex}")))
        );
        assert!(env.iter().any(|e| e["valueFrom"]["secretKeyRef"]
            == json!({"name": DEFAULT_TOKEN_SECRET, "key": "token"})));
        assert_eq!(
            job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            json!("models")
        );
    }

    #[test]
    fn direct_downloads_need_a_url_the_cluster_can_reach() {
        let spec = ClaimSpec {
            claim: "models".into(),
            direct: true,
            ..ClaimSpec::default()
        };
        let a = artifact("https://models.example/v3.onnx");
        let job = job_object(&spec, &a, "line").expect("job");
        let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(env[0]["value"], json!("https://models.example/v3.onnx"));
        assert!(
            !env.to_string().contains("FERMATA_TOKEN"),
            "no token for a URL of its own"
        );
        let mut repo = artifact("models/v3.onnx");
        repo.repo_path = Some("models/v3.onnx".into());
        let e = job_object(&spec, &repo, "line").expect_err("a repository file");
        assert!(e.contains("storeUrl"), "{e}");
    }

    #[test]
    fn the_script_verifies_size_and_sha256_before_the_rename() {
        let at = |needle: &str| {
            SCRIPT
                .find(needle)
                .unwrap_or_else(|| panic!("{needle} not in the script"))
        };
        assert!(at("size mismatch: got $size bytes, expected $FERMATA_SIZE") < at("mv -f"));
        assert!(at("sha256 mismatch: got $got, expected $FERMATA_SHA256") < at("mv -f"));
        assert!(at("--header \"Authorization: Bearer $FERMATA_TOKEN\"") < at("mv -f"));
        assert!(SCRIPT.contains("tee /dev/termination-log"));
        assert!(SCRIPT.starts_with("set -eu\n"));
    }

    #[test]
    fn job_states_prefer_the_verifiers_words() {
        let job = |conds: Value| json!({"status": {"conditions": conds}});
        let cases = [
            ("no status", job(json!([])), vec![], JobState::Running),
            (
                "complete",
                job(json!([{"type": "Complete", "status": "True"}])),
                vec![],
                JobState::Done,
            ),
            (
                "failed, no pods",
                job(
                    json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit"}]),
                ),
                vec![],
                JobState::Failed("Job has reached the specified backoff limit".into()),
            ),
            (
                "failed, a pod's termination message",
                job(
                    json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
                ),
                vec![
                    json!({"status": {"containerStatuses": [{"state": {"terminated":
                    {"exitCode": 1, "message": "sha256 mismatch: got a, expected b\n"}}}]}}),
                ],
                JobState::Failed("sha256 mismatch: got a, expected b".into()),
            ),
        ];
        for (name, j, pods, want) in cases {
            assert_eq!(job_state(&j, &pods), want, "{name}");
        }
    }

    #[test]
    fn names_are_stable_and_valid() {
        let d = Digest::of(b"x");
        assert_eq!(job_name("models", &d), job_name("models", &d));
        assert_ne!(job_name("models", &d), job_name("other", &d));
        assert!(job_name("models", &d).len() <= 63);
        assert_eq!(ledger_name("models"), "fermata-artifacts-models");
    }

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    #[test]
    fn the_keep_set_is_applied_staged_and_previous_of_every_record() {
        let rec = |applied: &[u8], staged: &[u8], previous: &[u8]| RecordArtifacts {
            applied: applied.iter().map(|n| d(*n)).collect(),
            staged: staged.iter().map(|n| d(*n)).collect(),
            previous: previous.iter().map(|n| d(*n)).collect(),
            staged_unknown: false,
        };
        let set = |ns: &[u8]| Some(ns.iter().map(|n| d(*n)).collect::<BTreeSet<_>>());
        type Case = (
            &'static str,
            Vec<RecordArtifacts>,
            Vec<Digest>,
            Option<BTreeSet<Digest>>,
        );
        let cases: Vec<Case> = vec![
            ("no records", vec![], vec![], set(&[])),
            (
                "applied only",
                vec![rec(&[1], &[1], &[])],
                vec![],
                set(&[1]),
            ),
            (
                "applied, staged and previous",
                vec![rec(&[2], &[3], &[1])],
                vec![],
                set(&[1, 2, 3]),
            ),
            (
                "the union over compositions",
                vec![rec(&[2], &[2], &[1]), rec(&[5], &[6], &[])],
                vec![],
                set(&[1, 2, 5, 6]),
            ),
            (
                "a delivery under way",
                vec![rec(&[2], &[2], &[])],
                vec![d(9)],
                set(&[2, 9]),
            ),
            (
                "a staged state that does not list its artifacts keeps everything",
                vec![
                    rec(&[2], &[2], &[]),
                    RecordArtifacts {
                        staged_unknown: true,
                        ..rec(&[4], &[], &[])
                    },
                ],
                vec![],
                None,
            ),
        ];
        for (name, records, busy, want) in cases {
            assert_eq!(keep_set(&records, busy), want, "{name}");
        }
    }

    #[test]
    fn garbage_is_what_the_ledger_has_and_nothing_keeps() {
        let keep: BTreeSet<Digest> = [d(1), d(2)].into();
        let ledger: Vec<String> = vec![
            d(3).to_hex(),
            d(1).to_hex(),
            d(4).to_hex(),
            "not-a-digest".into(),
            d(0xab).to_hex().to_uppercase(),
            format!("sha256:{}", d(6).to_hex()),
            d(3).to_hex(),
        ];
        assert_eq!(garbage(&ledger, &keep), vec![d(3), d(4)]);
        let many: Vec<String> = (0..=255u8).chain(0..=255).map(|n| d(n).to_hex()).collect();
        let g = garbage(&many, &BTreeSet::new());
        assert_eq!(g.len(), 256.min(GC_BATCH));
    }

    #[test]
    fn the_gc_job_removes_by_digest_from_the_claim() {
        let spec = store_spec();
        let garbage = [d(7), d(8)];
        let job = gc_job_object(&spec, &garbage, "line");
        assert_eq!(
            job["metadata"]["name"],
            json!(gc_job_name("models", &garbage))
        );
        assert_eq!(job["metadata"]["labels"][GC_LABEL], json!("models"));
        assert_eq!(gc_job_digests(&job), Some(garbage.to_vec()));
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["command"], json!(["sh", "-c", GC_SCRIPT]));
        assert_eq!(c["image"], json!(DEFAULT_IMAGE));
        let list = c["env"][0]["value"].as_str().expect("FERMATA_GARBAGE");
        assert!(
            list.split(' ').all(|x| x.len() == 64
                && x.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())),
            "only hex digests reach the shell: {list}"
        );
        assert_eq!(c["env"][1]["value"], json!("/artifacts/sha256"));
        assert_ne!(
            gc_job_name("models", &garbage),
            gc_job_name("models", &garbage[..1])
        );
        assert_ne!(
            gc_job_name("models", &garbage),
            gc_job_name("other", &garbage)
        );
        assert!(gc_job_name("models", &garbage).len() <= 63);
        assert_eq!(
            forget_patch(&garbage),
            json!({"data": {d(7).to_hex(): null, d(8).to_hex(): null}})
        );
    }

    /// The script, run by `sh` on a directory standing for the claim.
    fn run_gc(dir: &std::path::Path, garbage: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .args(["-c", GC_SCRIPT])
            .env("FERMATA_GARBAGE", garbage)
            .env("FERMATA_DIR", dir)
            .env("FERMATA_LOG", dir.join("log"))
            .output()
            .expect("sh")
    }

    #[test]
    fn the_gc_script_removes_only_digests() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("sha256");
        std::fs::create_dir_all(&dir).expect("dir");
        for n in [1, 2, 3] {
            std::fs::write(dir.join(d(n).to_hex()), b"x").expect("file");
        }
        std::fs::write(tmp.path().join("outside"), b"x").expect("file");
        let out = run_gc(&dir, &format!("{} {}", d(1).to_hex(), d(4).to_hex()));
        assert!(out.status.success(), "{out:?}");
        assert!(!dir.join(d(1).to_hex()).exists(), "removed");
        assert!(dir.join(d(2).to_hex()).exists() && dir.join(d(3).to_hex()).exists());

        // Nothing but hex reaches `rm`: not a path, not a command.
        let pwned = tmp.path().join("pwned");
        for bad in [
            format!("{} ../outside", d(2).to_hex()),
            format!("{};touch${{IFS}}{}", d(2).to_hex(), pwned.display()),
            format!("$(touch {})", pwned.display()),
            "*".to_string(),
            d(2).to_hex()[..63].to_string(),
        ] {
            let out = run_gc(&dir, &bad);
            assert!(!out.status.success(), "{bad} refused");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("not a digest"),
                "{bad}: {out:?}"
            );
            assert!(dir.join(d(2).to_hex()).exists(), "{bad}: nothing removed");
            assert!(tmp.path().join("outside").exists(), "{bad}");
            assert!(!pwned.exists(), "{bad}: nothing run");
        }
    }
}
