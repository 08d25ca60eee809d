//! The `manifests:` synthesizer: every YAML file of a folder, in path order,
//! with `${VAR}` from synthesisEnv (else the site's env), `${binding.KEY.path}`
//! from bound objects and `${site.name}`, `${site.labels.KEY}`,
//! `${site.env.NAME}` from the site it is rendered for, and
//! `${artifact.NAME.path}`: where the synthesizer's artifact `NAME` lies in
//! a Kubernetes target's artifact claim (`sha256/<digest>`, relative to the
//! claim's root: mount the claim and join, or use it as a `subPath`).

use serde::Deserialize;
use serde_json::Value;

use super::subst::substitute;
use super::{Resource, SynthError};
use crate::model::{Artifact, Composition};
use crate::source::{Entry, Snapshot};

pub(super) fn render(
    snap: &Snapshot,
    dir: &str,
    comp: &Composition,
    artifacts: &[Artifact],
) -> Result<Vec<Resource>, SynthError> {
    let mut out = Vec::new();
    for (path, entry) in snap.under(dir) {
        if !(path.ends_with(".yaml") || path.ends_with(".yml")) {
            continue;
        }
        let file_err = |message: String| SynthError::File {
            file: path.to_string(),
            message,
        };
        let data = match entry {
            Entry::Oversize { size } => {
                return Err(file_err(format!(
                    "file is {size} bytes, over the 4 MiB limit"
                )))
            }
            Entry::Symlink { .. } => {
                let (d, n) = crate::source::split(path);
                snap.resolve(d, n).map_err(|e| file_err(e.to_string()))?;
                snap.read(path)
                    .ok_or_else(|| file_err("symlink to a missing file".to_string()))?
            }
            Entry::File { data, .. } => data,
        };
        let text = std::str::from_utf8(data).map_err(|_| file_err("file is not UTF-8".into()))?;
        let text = substitute(text, |name| lookup(comp, artifacts, name)).map_err(|e| {
            SynthError::Template {
                file: path.to_string(),
                line: e.line,
                message: e.message,
            }
        })?;
        for de in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(de).map_err(|e| SynthError::Template {
                file: path.to_string(),
                line: e.location().map(|l| l.line()).unwrap_or(1),
                message: format!("after substitution: {e}"),
            })?;
            if doc.is_null() {
                continue;
            }
            let object = serde_json::to_value(&doc).map_err(|e| file_err(e.to_string()))?;
            out.push(
                Resource::new(object).map_err(|message| SynthError::Resource {
                    origin: path.to_string(),
                    message,
                })?,
            );
        }
    }
    Ok(out)
}

/// `${artifact.NAME.path}`: the artifact's path in a claim.
fn artifact_value(artifacts: &[Artifact], name: &str, rest: &str) -> Result<String, String> {
    let Some((artifact, "path")) = rest.rsplit_once('.') else {
        return Err(format!(
            "${{{name}}}: write ${{artifact.NAME.path}} (the only field of an artifact)"
        ));
    };
    artifacts
        .iter()
        .find(|a| a.name == artifact)
        .map(|a| crate::model::artifact_claim_path(&a.sha256))
        .ok_or_else(|| {
            let known: Vec<&str> = artifacts.iter().map(|a| a.name.as_str()).collect();
            format!(
                "${{{name}}}: the synthesizer has no artifact {artifact:?} (it has: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
}

/// Resolves one `${...}` name for `comp`.
fn lookup(comp: &Composition, artifacts: &[Artifact], name: &str) -> Result<String, String> {
    if let Some(path) = name.strip_prefix("site.") {
        return super::site_value(comp, name, path);
    }
    if let Some(rest) = name.strip_prefix("artifact.") {
        return artifact_value(artifacts, name, rest);
    }
    let Some(path) = name.strip_prefix("binding.") else {
        // A site's env is there too, under what the symphony sets.
        let own = comp.env.get(name);
        let site = comp.site.as_ref().and_then(|s| s.env.get(name));
        return own.or(site).cloned().ok_or_else(|| {
            format!(
                "undefined variable ${{{name}}}: not in the synthesisEnv of {}{}",
                comp.id,
                match &comp.site {
                    Some(s) => format!(" nor in the env of site {:?}", s.name),
                    None => String::new(),
                }
            )
        });
    };
    let mut parts = path.split('.');
    let key = parts.next().unwrap_or_default();
    let bound = comp
        .bindings
        .get(key)
        .ok_or_else(|| format!("${{{name}}}: {} has no binding {key:?}", comp.id))?;
    let mut v = &bound.object;
    for p in parts {
        let next = match v {
            Value::Object(m) => m.get(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        v = next.ok_or_else(|| {
            format!(
                "${{{name}}}: the object bound as {key:?} (at {}) has no field {p:?}",
                bound.origin
            )
        })?;
    }
    Ok(match v {
        Value::String(s) if s.contains('\n') => Value::String(s.clone()).to_string(),
        Value::String(s) => s.clone(),
        Value::Null => String::from("null"),
        // Numbers, booleans, and flow-style JSON for mappings and lists: all valid YAML.
        other => other.to_string(),
    })
}
