//! Synthesis: turning one composition into its rendered resources.
//!
//! Two kinds of synthesizer (DESIGN.md section 1): a folder of YAML templates
//! ([`manifests`]) or a KRM function ([`command`]). Both end in the same
//! canonical, sorted resource list with a SHA-256 digest, so identical input
//! always yields the identical digest and an unchanged composition costs no
//! target write.

mod command;
mod manifests;
pub mod subst;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::model::{Artifact, Composition, CompositionId, Diagnostic, Digest, Fleet, SynthKind};
use crate::source::Snapshot;

pub use crate::model::wellknown::{
    COMPOSITION as COMPOSITION_ANNOTATION, DIGEST as DIGEST_ANNOTATION,
};

/// What identifies a resource on a target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceKey {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    /// `apps/v1/Deployment/line/vision`, the component name status reports.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/", self.api_version, self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

/// One rendered resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub key: ResourceKey,
    pub object: Value,
}

impl Resource {
    /// Checks the fields every resource needs and derives its key.
    pub fn new(object: Value) -> Result<Resource, String> {
        let s = |v: Option<&Value>, f: &str| match v {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(format!("{f} must be a non-empty string")),
            None => Err(format!("missing {f}")),
        };
        if !object.is_object() {
            return Err("a resource must be a mapping".to_string());
        }
        let meta = object.get("metadata");
        let key = ResourceKey {
            api_version: s(object.get("apiVersion"), "apiVersion")?,
            kind: s(object.get("kind"), "kind")?,
            name: s(meta.and_then(|m| m.get("name")), "metadata.name")?,
            namespace: match meta.and_then(|m| m.get("namespace")) {
                None | Some(Value::Null) => None,
                v => Some(s(v, "metadata.namespace")?),
            },
        };
        Ok(Resource { key, object })
    }
}

/// A composition's desired state: what is staged and applied as one unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    pub id: CompositionId,
    pub digest: Digest,
    /// Sorted by key: the canonical order.
    pub resources: Vec<Resource>,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub artifacts: Vec<Artifact>,
}

impl Rendered {
    /// Sorts, checks for duplicates and computes the digest.
    fn new(
        comp: &Composition,
        mut resources: Vec<Resource>,
        artifacts: Vec<Artifact>,
    ) -> Result<Rendered, SynthError> {
        resources.sort_by(|a, b| a.key.cmp(&b.key));
        if let Some(w) = resources.windows(2).find(|w| w[0].key == w[1].key) {
            return Err(SynthError::Duplicate {
                key: w[0].key.to_string(),
            });
        }
        Ok(Rendered::assemble(
            comp.id.clone(),
            resources,
            comp.annotations.clone(),
            comp.labels.clone(),
            artifacts,
        ))
    }

    /// Sorts the artifacts and computes the digest of already sorted resources.
    fn assemble(
        id: CompositionId,
        resources: Vec<Resource>,
        annotations: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
        mut artifacts: Vec<Artifact>,
    ) -> Rendered {
        artifacts.sort_by(|a, b| a.name.cmp(&b.name));
        // serde_json maps are sorted by key, so this serialization is canonical.
        let canonical = serde_json::json!({
            "resources": resources.iter().map(|r| &r.object).collect::<Vec<_>>(),
            "annotations": annotations,
            "labels": labels,
            "artifacts": artifacts.iter().map(|a| serde_json::json!({
                "name": a.name, "sha256": a.sha256, "size": a.size,
            })).collect::<Vec<_>>(),
        });
        let digest = Digest::of(canonical.to_string().as_bytes());
        Rendered {
            id,
            digest,
            resources,
            annotations,
            labels,
            artifacts,
        }
    }

    /// A state rebuilt from its parts (e.g. what a target holds), sorted and
    /// digested exactly as a render is, so equal parts give an equal digest.
    pub fn from_parts(
        id: CompositionId,
        mut resources: Vec<Resource>,
        annotations: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
        artifacts: Vec<Artifact>,
    ) -> Rendered {
        resources.sort_by(|a, b| a.key.cmp(&b.key));
        Rendered::assemble(id, resources, annotations, labels, artifacts)
    }

    /// A rendered state built from resource objects, for tests of the stages
    /// after synthesis (a real render needs a snapshot and a fleet). Same
    /// sorting and digest as [`render`]; panics on an invalid resource.
    #[cfg(test)]
    pub(crate) fn for_tests(
        id: CompositionId,
        objects: Vec<Value>,
        annotations: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
        artifacts: Vec<Artifact>,
    ) -> Rendered {
        let mut resources: Vec<Resource> = objects
            .into_iter()
            .map(|o| Resource::new(o).expect("valid test resource"))
            .collect();
        resources.sort_by(|a, b| a.key.cmp(&b.key));
        Rendered::assemble(id, resources, annotations, labels, artifacts)
    }

    /// The resources as one YAML stream in canonical order.
    pub fn manifest_yaml(&self) -> String {
        let mut out = String::new();
        for r in &self.resources {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&r.object).unwrap_or_default());
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("no Synthesizer named {0:?}")]
    UnknownSynthesizer(String),
    #[error("{file}:{line}: {message}")]
    Template {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{origin}: {message}")]
    Resource { origin: String, message: String },
    #[error("two resources named {key}")]
    Duplicate { key: String },
    #[error("command {command:?} failed: {message}{}", tail(stderr))]
    Command {
        command: String,
        message: String,
        stderr: String,
    },
}

fn tail(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

impl SynthError {
    /// The error as a diagnostic, located in the template or at the synthesizer.
    pub fn diagnostic(&self, fleet: &Fleet, comp: &Composition) -> Diagnostic {
        let synth = fleet.synthesizers.get(&comp.synthesizer);
        let (file, line) = synth
            .map(|s| (s.origin.file.clone(), Some(s.origin.line)))
            .unwrap_or_else(|| (comp.origin.file.clone(), Some(comp.origin.line)));
        let prefix = match &comp.site {
            Some(site) => format!("{} at site {}: ", comp.id, site.name),
            None => format!("{}: ", comp.id),
        };
        match self {
            SynthError::Template {
                file,
                line,
                message,
            } => Diagnostic::new(file, Some(*line), "", format!("{prefix}{message}")),
            SynthError::File { file, message } => {
                Diagnostic::new(file, None, "", format!("{prefix}{message}"))
            }
            SynthError::Command { .. } => {
                Diagnostic::new(file, line, "spec.command", format!("{prefix}{self}"))
            }
            _ => Diagnostic::new(file, line, "spec", format!("{prefix}{self}")),
        }
    }
}

/// What rendering may cost the process that runs it. Set by the operator
/// (`--max-render-output`), never by the repository: it protects fermata
/// from the commands a repository names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes a `command:` synthesizer may print on stdout; past them it is
    /// killed and the render fails.
    pub max_output: u64,
}

impl Limits {
    /// 64 MiB: 16 times the 4 MiB file limit, and far above what a real
    /// ResourceList needs, while a few renders at once fit a small edge box.
    pub const DEFAULT_MAX_OUTPUT: u64 = 64 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_output: Limits::DEFAULT_MAX_OUTPUT,
        }
    }
}

/// Resolves `${site.PATH}` (`name` is the whole variable) for `comp`: its
/// site's `name`, `labels.KEY` or `env.NAME`. Without a site, or for a label
/// or variable the site lacks, an error as for an undefined variable.
fn site_value(comp: &Composition, name: &str, path: &str) -> Result<String, String> {
    let Some(site) = &comp.site else {
        return Err(format!(
            "${{{name}}}: {} is rendered for no site (site values exist only in a site's view: Site objects in the repository, and --site or a site agent)",
            comp.id
        ));
    };
    let found = if path == "name" {
        Some(&site.name)
    } else if let Some(key) = path.strip_prefix("labels.") {
        site.labels.get(key)
    } else if let Some(var) = path.strip_prefix("env.") {
        site.env.get(var)
    } else {
        return Err(format!(
            "${{{name}}}: unknown site value; use site.name, site.labels.KEY or site.env.NAME"
        ));
    };
    found.cloned().ok_or_else(|| {
        let (what, key) = match path.split_once('.') {
            Some(("labels", k)) => ("label", k),
            Some((_, k)) => ("env variable", k),
            None => ("value", path),
        };
        format!(
            "${{{name}}}: site {:?} (at {}) has no {what} {key:?}",
            site.name, site.origin
        )
    })
}

/// Renders one composition of `fleet` from the files of `snap`.
pub fn render(
    snap: &Snapshot,
    fleet: &Fleet,
    comp: &Composition,
    limits: &Limits,
) -> Result<Rendered, SynthError> {
    let synth = fleet
        .synthesizers
        .get(&comp.synthesizer)
        .ok_or_else(|| SynthError::UnknownSynthesizer(comp.synthesizer.clone()))?;
    let resources = match &synth.kind {
        SynthKind::Manifests { dir } => manifests::render(snap, dir, comp, &synth.artifacts)?,
        SynthKind::Command { argv } => command::render(snap, synth, argv, comp, limits)?,
    };
    Rendered::new(comp, resources, synth.artifacts.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, Site};

    fn comp(site: Option<Site>) -> Composition {
        Composition {
            id: CompositionId::new("line", "vision"),
            origin: Origin {
                file: "s.yaml".into(),
                line: 3,
            },
            synthesizer: "app".into(),
            env: [("LINES".to_string(), "8".to_string())].into(),
            bindings: BTreeMap::new(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            target: "t".into(),
            window: None,
            scheduling_gates: vec![],
            depends_on: vec![],
            optional: false,
            site,
        }
    }

    fn plant_a() -> Site {
        Site {
            name: "plant-a".into(),
            origin: Origin {
                file: "sites.yaml".into(),
                line: 2,
            },
            labels: [("example.com/ring".to_string(), "canary".to_string())].into(),
            env: [
                ("LINES".to_string(), "4".to_string()),
                ("ZONE".to_string(), "z1".to_string()),
            ]
            .into(),
        }
    }

    #[test]
    fn site_values_table() {
        let at_a = comp(Some(plant_a()));
        let nowhere = comp(None);
        let cases: [(&Composition, &str, Result<&str, &str>); 7] = [
            (&at_a, "site.name", Ok("plant-a")),
            (&at_a, "site.labels.example.com/ring", Ok("canary")),
            (&at_a, "site.env.LINES", Ok("4")),
            (
                &at_a,
                "site.labels.tier",
                Err("${site.labels.tier}: site \"plant-a\" (at sites.yaml:2) has no label \"tier\""),
            ),
            (
                &at_a,
                "site.env.NOPE",
                Err("${site.env.NOPE}: site \"plant-a\" (at sites.yaml:2) has no env variable \"NOPE\""),
            ),
            (
                &at_a,
                "site.zone",
                Err("${site.zone}: unknown site value; use site.name, site.labels.KEY or site.env.NAME"),
            ),
            (
                &nowhere,
                "site.name",
                Err("${site.name}: line/vision is rendered for no site (site values exist only in a site's view: Site objects in the repository, and --site or a site agent)"),
            ),
        ];
        for (c, name, want) in cases {
            let path = name.strip_prefix("site.").unwrap_or(name);
            let got = site_value(c, name, path);
            assert_eq!(
                got.as_deref(),
                want.map_err(str::to_string).as_deref(),
                "{name}"
            );
        }
    }

    #[test]
    fn the_composition_env_wins_over_the_site_env() {
        let env = comp(Some(plant_a())).synthesis_env();
        assert_eq!(env.get("LINES").map(String::as_str), Some("8"));
        assert_eq!(env.get("ZONE").map(String::as_str), Some("z1"));
        assert_eq!(comp(None).synthesis_env(), comp(None).env);
    }
}
