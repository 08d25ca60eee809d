//! Loading a [`Fleet`] from a [`Snapshot`]: parse every YAML document under
//! the configured path, type-check fermata's kinds, resolve references, merge
//! symphony-level defaults, and report every problem of the pass at once.
//!
//! A broken object fails only itself and what depends on it (DESIGN.md
//! invariant 6): the rest of the fleet is returned and goes on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use super::fleet::*;
use super::position::{self, LineIndex};
use super::site::{check_label_key, check_label_value};
use super::types::*;
use super::{CompositionId, Diagnostic, Digest, Operator, Origin, Requirement, Site, SiteSelector};
use crate::source::{split, Entry, Snapshot};
use crate::window::{parse_duration, parse_timezone, Schedule, Window};

mod campaigns;

/// The outcome of loading one revision.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// What loaded cleanly; `fleet.failed` names symphonies that did not.
    pub fleet: Fleet,
    /// Every error, in file order.
    pub errors: Vec<Diagnostic>,
    /// Things that load but probably do not mean what the user thinks.
    pub warnings: Vec<Diagnostic>,
    /// Files (or the `--path` folder itself) that could not be read as far as
    /// knowing which objects they define: a YAML syntax error, bytes that are
    /// not UTF-8, an unknown kind, a name that is missing or invalid. Such a
    /// file may still define any symphony, so while one exists no symphony
    /// counts as removed (DESIGN.md invariant 10). First problem per file.
    pub unreadable: BTreeMap<String, Diagnostic>,
}

/// Default synthesizer timeout, as in DESIGN.md.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One YAML document of the repository.
struct Doc {
    file: String,
    lines: LineIndex,
    value: Value,
}

impl Doc {
    fn diag(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(&self.file, self.lines.line(field), field, message)
    }

    fn origin(&self, field: &str) -> Origin {
        Origin {
            file: self.file.clone(),
            line: self.lines.line(field).unwrap_or_else(|| self.lines.root()),
        }
    }

    fn str_at(&self, path: &[&str]) -> Option<&str> {
        let mut v = &self.value;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str()
    }
}

/// A fermata object before its spec is type-checked.
struct Raw {
    kind: String,
    name: String,
    doc: Doc,
}

/// Loads every object under `root` (a folder of the snapshot, `""` for all).
pub fn load(snap: &Snapshot, root: &str) -> Loaded {
    let mut l = Loader::default();
    let root = match snap.resolve("", root) {
        Ok(r) if snap.is_dir(&r) => r,
        Ok(r) => {
            l.unreadable_error(Diagnostic::new(
                root,
                None,
                "",
                snap.in_submodule(&r).unwrap_or_else(|| {
                    format!("no folder {r:?} at revision {}", snap.revision.short())
                }),
            ));
            return l.finish(Fleet::default());
        }
        Err(e) => {
            l.unreadable_error(Diagnostic::new(root, None, "", format!("--path: {e}")));
            return l.finish(Fleet::default());
        }
    };
    let (docs, syntax) = read_documents(snap, &root, &mut l);
    let (raws, inputs) = l.classify(docs);

    // Type-check every object, then drop duplicates (which one is meant is
    // unknowable, so neither is used).
    let mut objs = Objects::default();
    let mut seen: HashMap<(String, String), Origin> = HashMap::new();
    let mut dups: BTreeSet<(String, String)> = BTreeSet::new();
    for raw in raws {
        let key = (raw.kind.clone(), raw.name.clone());
        let origin = raw.doc.origin("metadata.name");
        if let Some(first) = seen.get(&key) {
            let d = raw.doc.diag(
                "metadata.name",
                format!(
                    "duplicate {} {:?}: also defined at {first}",
                    raw.kind, raw.name
                ),
            );
            l.broken(&raw.kind, &raw.name, d.clone());
            l.errors.push(d);
            dups.insert(key);
            continue;
        }
        seen.insert(key, origin);
        l.type_check(raw, &mut objs);
    }
    for (kind, name) in dups {
        objs.remove(&kind, &name);
    }

    let mut fleet = Fleet::default();
    l.resolve_sites(objs.sites, &mut fleet);
    l.resolve_windows(objs.windows, &mut fleet);
    l.resolve_targets(objs.targets, &mut fleet);
    l.resolve_synthesizers(snap, objs.synthesizers, &mut fleet);

    // Templates are not inputs, and they may only be valid YAML once rendered.
    let template_dirs: Vec<String> = fleet
        .synthesizers
        .values()
        .filter_map(|s| match &s.kind {
            SynthKind::Manifests { dir } => Some(dir.clone()),
            SynthKind::Command { .. } => None,
        })
        .collect();
    let in_templates = |file: &str| {
        template_dirs
            .iter()
            .any(|d| d.is_empty() || file.starts_with(&format!("{d}/")))
    };
    for (d, text) in syntax {
        if !in_templates(&d.file) {
            l.unreadable_error(d.clone());
            l.unparsed.push((d, text));
        }
    }
    let inputs: Vec<Doc> = inputs
        .into_iter()
        .filter(|d| !in_templates(&d.file))
        .collect();

    l.resolve_symphonies(objs.symphonies, &inputs, &mut fleet);
    l.check_dependencies(&mut fleet);
    l.resolve_campaigns(objs.campaigns, objs.activations, &mut fleet);
    l.errors.sort();
    l.finish(fleet)
}

/// Reads and parses every `*.yaml`/`*.yml` below `root`. Syntax errors are
/// returned apart, with the file's text: those in template folders are not
/// errors of the repository. Files that cannot be read at all also go to
/// `unparsed`, with no text.
fn read_documents(
    snap: &Snapshot,
    root: &str,
    l: &mut Loader,
) -> (Vec<Doc>, Vec<(Diagnostic, String)>) {
    let mut docs = Vec::new();
    let mut syntax = Vec::new();
    for (path, entry) in snap.under(root) {
        if !(path.ends_with(".yaml") || path.ends_with(".yml")) {
            continue;
        }
        let data = match entry {
            Entry::Oversize { size } => {
                let d = Diagnostic::new(
                    path,
                    None,
                    "",
                    format!(
                        "file is {size} bytes, over the {} MiB limit; large content belongs in an artifact",
                        crate::source::MAX_FILE_SIZE / (1024 * 1024)
                    ),
                );
                l.unparsed.push((d.clone(), String::new()));
                l.unreadable_error(d);
                continue;
            }
            Entry::Symlink { .. } => {
                let (dir, name) = split(path);
                if let Err(e) = snap.resolve(dir, name) {
                    l.unreadable_error(Diagnostic::new(path, None, "", e.to_string()));
                    continue;
                }
                match snap.read(path) {
                    Some(d) => d,
                    None => continue,
                }
            }
            Entry::File { data, .. } => data,
        };
        let text = match std::str::from_utf8(data) {
            Ok(text) => text,
            Err(e) => {
                // The line of the first byte that is not UTF-8.
                let valid = &data[..e.valid_up_to()];
                let line = 1 + valid.iter().filter(|b| **b == b'\n').count();
                let col = 1 + valid.iter().rev().take_while(|b| **b != b'\n').count();
                let d = Diagnostic::new(
                    path,
                    Some(line),
                    "",
                    format!("file is not UTF-8 (column {col})"),
                );
                l.unparsed.push((d.clone(), String::new()));
                l.unreadable_error(d);
                continue;
            }
        };
        if let Some((line, column, c)) = position::control_char(text) {
            let d = Diagnostic::new(
                path,
                Some(line),
                "",
                format!(
                    "control character U+{:04X} at column {column}: YAML allows no control characters but tab, line feed and carriage return",
                    c as u32
                ),
            );
            syntax.push((d, text.to_string()));
            continue;
        }
        let mut values = Vec::new();
        for de in serde_yaml::Deserializer::from_str(text) {
            match Value::deserialize(de) {
                Ok(v) => values.push(v),
                Err(e) => {
                    let line = e.location().map(|l| l.line());
                    syntax.push((
                        Diagnostic::new(path, line, "", e.to_string()),
                        text.to_string(),
                    ));
                    values.clear();
                    break;
                }
            }
        }
        let mut lines = position::index_documents(text).unwrap_or_default();
        lines.resize(values.len().max(lines.len()), LineIndex::default());
        for (value, lines) in values.into_iter().zip(lines) {
            if !value.is_mapping() {
                continue;
            }
            docs.push(Doc {
                file: path.to_string(),
                lines,
                value,
            });
        }
    }
    (docs, syntax)
}

#[derive(Default)]
struct Objects {
    symphonies: Vec<(Doc, Object<SymphonySpec>)>,
    synthesizers: Vec<(Doc, Object<SynthesizerSpec>)>,
    windows: Vec<(Doc, Object<MaintenanceWindowSpec>)>,
    targets: Vec<(Doc, Object<TargetSpec>)>,
    sites: Vec<(Doc, Object<SiteSpec>)>,
    campaigns: Vec<(Doc, Object<CampaignSpec>)>,
    activations: Vec<(Doc, Object<ActivationSpec>)>,
}

impl Objects {
    fn remove(&mut self, kind: &str, name: &str) {
        match kind {
            "Symphony" => self.symphonies.retain(|(_, o)| o.metadata.name != name),
            "Synthesizer" => self.synthesizers.retain(|(_, o)| o.metadata.name != name),
            "MaintenanceWindow" => self.windows.retain(|(_, o)| o.metadata.name != name),
            "Site" => self.sites.retain(|(_, o)| o.metadata.name != name),
            "Campaign" => self.campaigns.retain(|(_, o)| o.metadata.name != name),
            "Activation" => self.activations.retain(|(_, o)| o.metadata.name != name),
            _ => self.targets.retain(|(_, o)| o.metadata.name != name),
        }
    }
}

#[derive(Default)]
struct Loader {
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// Objects that failed, by (kind, name), with why: what refers to them fails too.
    broken: HashMap<(String, String), Vec<Diagnostic>>,
    /// Files that could not be parsed at all, with their text (empty when
    /// not even that was read): the objects they hold have no known name.
    unparsed: Vec<(Diagnostic, String)>,
    /// `dependsOn` of loaded symphonies, checked once all of them are loaded.
    depends_on: BTreeMap<CompositionId, Vec<Edge>>,
    /// See [`Loaded::unreadable`].
    unreadable: BTreeMap<String, Diagnostic>,
}

/// One `dependsOn` entry, with where it is written: errors about it point there.
struct Edge {
    to: CompositionId,
    origin: Origin,
    field: String,
}

impl Edge {
    fn diag(&self, message: String) -> Diagnostic {
        Diagnostic::new(
            &self.origin.file,
            Some(self.origin.line),
            &self.field,
            message,
        )
    }
}

impl Loader {
    fn finish(self, mut fleet: Fleet) -> Loaded {
        for ((kind, name), why) in &self.broken {
            if kind == "Site" && !fleet.sites.contains_key(name) {
                fleet.failed_sites.insert(name.clone(), why.clone());
            }
        }
        Loaded {
            fleet,
            errors: self.errors,
            warnings: self.warnings,
            unreadable: self.unreadable,
        }
    }

    /// ` (x.yaml:3 failed to load: ...)`: where object `kind` `name`, not
    /// found, was perhaps meant to be defined.
    fn failed_to_load(&self, kind: &str, name: &str) -> String {
        let failed: Vec<String> = self
            .unparsed
            .iter()
            .filter(|(d, text)| might_define(&d.file, text, kind, name))
            .map(|(d, _)| match d.line {
                Some(line) => format!("{}:{line} failed to load: {}", d.file, d.message),
                None => format!("{} failed to load: {}", d.file, d.message),
            })
            .collect();
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join("; "))
        }
    }

    /// An error that leaves unknown which objects its file defines.
    fn unreadable_error(&mut self, d: Diagnostic) {
        self.unreadable
            .entry(d.file.clone())
            .or_insert_with(|| d.clone());
        self.errors.push(d);
    }

    fn broken(&mut self, kind: &str, name: &str, d: Diagnostic) {
        self.broken
            .entry((kind.to_string(), name.to_string()))
            .or_default()
            .push(d);
    }

    /// Splits documents into fermata objects and input objects for bindings.
    fn classify(&mut self, docs: Vec<Doc>) -> (Vec<Raw>, Vec<Doc>) {
        let mut raws = Vec::new();
        let mut inputs = Vec::new();
        for doc in docs {
            let api = doc.str_at(&["apiVersion"]).unwrap_or_default().to_string();
            if api != API_VERSION {
                if api.starts_with("fermata.dev/") {
                    self.unreadable_error(doc.diag(
                        "apiVersion",
                        format!(
                            "unsupported apiVersion {api:?}; this fermata reads {API_VERSION:?}"
                        ),
                    ));
                } else {
                    inputs.push(doc);
                }
                continue;
            }
            let kind = doc.str_at(&["kind"]).unwrap_or_default().to_string();
            if !KINDS.contains(&kind.as_str()) {
                let msg = if kind.is_empty() {
                    format!("missing kind; one of {}", KINDS.join(", "))
                } else {
                    format!(
                        "unknown kind {kind:?}{}; one of {}",
                        did_you_mean(&kind, KINDS),
                        KINDS.join(", ")
                    )
                };
                self.unreadable_error(doc.diag("kind", msg));
                continue;
            }
            let name = match doc.value.get("metadata").and_then(|m| m.get("name")) {
                Some(Value::String(name)) => name.clone(),
                None | Some(Value::Null) => {
                    self.unreadable_error(doc.diag("metadata.name", "missing field `name`"));
                    continue;
                }
                // `name: 2024` is there, but YAML reads it as a number.
                Some(v) => {
                    let message = match v {
                        Value::Number(n) => format!("must be a string; quote it: name: \"{n}\""),
                        Value::Bool(b) => format!("must be a string; quote it: name: \"{b}\""),
                        _ => "must be a string".to_string(),
                    };
                    self.unreadable_error(doc.diag("metadata.name", message));
                    continue;
                }
            };
            if let Err(m) = check_name(&name) {
                let d = doc.diag("metadata.name", m);
                self.broken(&kind, &name, d.clone());
                self.unreadable_error(d);
                continue;
            }
            raws.push(Raw { kind, name, doc });
        }
        (raws, inputs)
    }

    fn type_check(&mut self, raw: Raw, objs: &mut Objects) {
        let Raw { kind, name, doc } = raw;
        let result = match kind.as_str() {
            "Symphony" => typed(&doc).map(|o| objs.symphonies.push((doc, o))),
            "Synthesizer" => typed(&doc).map(|o| objs.synthesizers.push((doc, o))),
            "MaintenanceWindow" => typed(&doc).map(|o| objs.windows.push((doc, o))),
            "Site" => typed(&doc).map(|o| objs.sites.push((doc, o))),
            "Campaign" => typed(&doc).map(|o| objs.campaigns.push((doc, o))),
            "Activation" => typed(&doc).map(|o| objs.activations.push((doc, o))),
            _ => typed(&doc).map(|o| objs.targets.push((doc, o))),
        };
        if let Err(d) = result {
            self.broken(&kind, &name, d.clone());
            self.errors.push(d);
        }
    }

    fn fail_all(&mut self, kind: &str, name: &str, diags: Vec<Diagnostic>) -> bool {
        if diags.is_empty() {
            return false;
        }
        for d in diags {
            self.broken(kind, name, d.clone());
            self.errors.push(d);
        }
        true
    }

    /// Sites first: targets and symphonies refer to them.
    fn resolve_sites(&mut self, sites: Vec<(Doc, Object<SiteSpec>)>, fleet: &mut Fleet) {
        for (doc, o) in sites {
            let mut errs = Vec::new();
            for (k, v) in &o.metadata.labels {
                let field = position::join("metadata.labels", k);
                if let Err(m) = check_label_key(k) {
                    errs.push(doc.diag(&field, m));
                } else if let Err(m) = check_label_value(v) {
                    errs.push(doc.diag(&field, m));
                }
            }
            let mut env = BTreeMap::new();
            for (i, v) in o.spec.env.iter().enumerate() {
                let field = format!("spec.env[{i}].name");
                if !is_identifier(&v.name) {
                    errs.push(doc.diag(
                        &field,
                        format!(
                            "{:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                            v.name
                        ),
                    ));
                } else if env.insert(v.name.clone(), v.value.clone()).is_some() {
                    errs.push(doc.diag(&field, format!("duplicate variable {:?}", v.name)));
                }
            }
            let name = o.metadata.name;
            if self.fail_all("Site", &name, errs) {
                continue;
            }
            fleet.sites.insert(
                name.clone(),
                Site {
                    name,
                    origin: doc.origin(""),
                    labels: o.metadata.labels,
                    env,
                },
            );
        }
    }

    fn resolve_windows(
        &mut self,
        windows: Vec<(Doc, Object<MaintenanceWindowSpec>)>,
        fleet: &mut Fleet,
    ) {
        for (doc, o) in windows {
            let mut errs = Vec::new();
            let schedule = Schedule::parse(&o.spec.schedule)
                .map_err(|e| errs.push(doc.diag("spec.schedule", e.to_string())))
                .ok();
            let duration = parse_duration(&o.spec.duration)
                .map_err(|e| e.to_string())
                .map_err(|e| errs.push(doc.diag("spec.duration", e)))
                .ok();
            let tz = parse_timezone(o.spec.timezone.as_deref().unwrap_or("UTC"))
                .map_err(|e| errs.push(doc.diag("spec.timezone", e.to_string())))
                .ok();
            let name = o.metadata.name;
            if self.fail_all("MaintenanceWindow", &name, errs) {
                continue;
            }
            let (Some(schedule), Some(duration), Some(tz)) = (schedule, duration, tz) else {
                continue;
            };
            for w in schedule.warnings() {
                self.warnings.push(doc.diag("spec.schedule", w.clone()));
            }
            fleet.windows.insert(
                name.clone(),
                MaintenanceWindow {
                    origin: doc.origin(""),
                    window: Window {
                        name,
                        schedule,
                        duration,
                        tz,
                    },
                },
            );
        }
    }

    fn resolve_targets(&mut self, targets: Vec<(Doc, Object<TargetSpec>)>, fleet: &mut Fleet) {
        for (doc, o) in targets {
            let kind = match (o.spec.directory, o.spec.kubernetes) {
                (Some(d), None) if d.path.trim().is_empty() => {
                    Err(doc.diag("spec.directory.path", "must not be empty"))
                }
                // A relative path lives under --target-root: one climbing
                // out of it would write wherever the repository says.
                (Some(d), None)
                    if std::path::Path::new(&d.path)
                        .components()
                        .any(|c| c == std::path::Component::ParentDir) =>
                {
                    Err(doc.diag(
                        "spec.directory.path",
                        format!("{:?} has a `..` component: a relative path is under --target-root, and a path must not climb out of it", d.path),
                    ))
                }
                (Some(d), None) => Ok(TargetKind::Directory { path: d.path }),
                (None, Some(k)) => check_kubernetes(&doc, &k).map(|()| TargetKind::Kubernetes(k)),
                (Some(_), Some(_)) => Err(doc.diag(
                    "spec",
                    "set exactly one of `directory` and `kubernetes`, not both",
                )),
                (None, None) => Err(doc.diag("spec", "set one of `directory` or `kubernetes`")),
            };
            let kind = kind.and_then(|k| match &o.spec.site {
                Some(site) => self.site_ref(&doc, fleet, site, "spec.site").map(|()| k),
                None => Ok(k),
            });
            match kind {
                Ok(kind) => {
                    fleet.targets.insert(
                        o.metadata.name.clone(),
                        Target {
                            name: o.metadata.name,
                            origin: doc.origin(""),
                            site: o.spec.site,
                            kind,
                        },
                    );
                }
                Err(d) => {
                    self.fail_all("Target", &o.metadata.name, vec![d]);
                }
            }
        }
    }

    /// Checks a reference to a Site at `field` of `doc`.
    fn site_ref(
        &self,
        doc: &Doc,
        fleet: &Fleet,
        site: &str,
        field: &str,
    ) -> Result<(), Diagnostic> {
        if fleet.sites.contains_key(site) {
            return Ok(());
        }
        let message = if let Some(ds) = self.broken.get(&("Site".to_string(), site.to_string())) {
            let why: Vec<String> = ds.iter().map(ToString::to_string).collect();
            format!("Site {site:?} is invalid: {}", why.join("; "))
        } else if fleet.sites.is_empty() {
            format!("no Site named {site:?}: the repository defines no Site objects")
        } else {
            format!(
                "no Site named {site:?}{}",
                did_you_mean(site, fleet.sites.keys().map(String::as_str))
            )
        };
        Err(doc.diag(field, message))
    }

    fn resolve_synthesizers(
        &mut self,
        snap: &Snapshot,
        synths: Vec<(Doc, Object<SynthesizerSpec>)>,
        fleet: &mut Fleet,
    ) {
        for (doc, o) in synths {
            let (dir, _) = split(&doc.file);
            let dir = dir.to_string();
            let mut errs = Vec::new();
            let kind = match (&o.spec.manifests, &o.spec.command) {
                (Some(m), None) => match snap.resolve(&dir, m) {
                    Ok(p) if snap.is_dir(&p) => Some(SynthKind::Manifests { dir: p }),
                    Ok(p) => {
                        errs.push(doc.diag(
                            "spec.manifests",
                            snap.in_submodule(&p).unwrap_or_else(|| {
                                format!("no folder {p:?} in the repository at this revision")
                            }),
                        ));
                        None
                    }
                    Err(e) => {
                        errs.push(doc.diag("spec.manifests", e.to_string()));
                        None
                    }
                },
                (None, Some(argv)) => match check_command(snap, &dir, argv) {
                    Ok(()) => Some(SynthKind::Command { argv: argv.clone() }),
                    Err(m) => {
                        errs.push(doc.diag("spec.command", m));
                        None
                    }
                },
                (Some(_), Some(_)) => {
                    errs.push(doc.diag(
                        "spec",
                        "set exactly one of `manifests` and `command`, not both",
                    ));
                    None
                }
                (None, None) => {
                    errs.push(doc.diag("spec", "set one of `manifests` or `command`"));
                    None
                }
            };
            let timeout = match &o.spec.timeout {
                None => DEFAULT_TIMEOUT,
                Some(t) => parse_duration(t)
                    .map_err(|e| e.to_string())
                    .map_err(|e| errs.push(doc.diag("spec.timeout", e)))
                    .unwrap_or(DEFAULT_TIMEOUT),
            };
            let mut artifacts = Vec::new();
            let mut names = BTreeSet::new();
            for (i, a) in o.spec.artifacts.iter().enumerate() {
                let at = |f: &str| format!("spec.artifacts[{i}].{f}");
                if let Err(m) = check_file_name(&a.name) {
                    errs.push(doc.diag(&at("name"), m));
                } else if !names.insert(a.name.clone()) {
                    errs.push(doc.diag(&at("name"), format!("duplicate artifact {:?}", a.name)));
                }
                let repo_path = if a.url.contains("://") {
                    if !["http://", "https://", "file://"]
                        .iter()
                        .any(|s| a.url.starts_with(s))
                    {
                        errs.push(doc.diag(&at("url"), format!("{:?}: only http://, https:// and file:// URLs, or a path in the repository, can be fetched", a.url)));
                    }
                    None
                } else {
                    match snap.resolve(&dir, &a.url) {
                        Ok(p) if matches!(snap.entry(&p), Some(Entry::File { .. })) => Some(p),
                        Ok(p) => {
                            errs.push(doc.diag(
                                &at("url"),
                                snap.in_submodule(&p).unwrap_or_else(|| {
                                    format!("no file {p:?} in the repository at this revision")
                                }),
                            ));
                            None
                        }
                        Err(e) => {
                            errs.push(doc.diag(&at("url"), e.to_string()));
                            None
                        }
                    }
                };
                match a.sha256.parse::<Digest>() {
                    Ok(sha256) => artifacts.push(Artifact {
                        name: a.name.clone(),
                        url: a.url.clone(),
                        repo_path,
                        sha256,
                        size: a.size,
                    }),
                    Err(m) => errs.push(doc.diag(&at("sha256"), m)),
                }
            }
            let name = o.metadata.name;
            if self.fail_all("Synthesizer", &name, errs) {
                continue;
            }
            let Some(kind) = kind else { continue };
            fleet.synthesizers.insert(
                name.clone(),
                Synthesizer {
                    name,
                    origin: doc.origin(match kind {
                        SynthKind::Manifests { .. } => "spec.manifests",
                        SynthKind::Command { .. } => "spec.command",
                    }),
                    dir,
                    kind,
                    timeout,
                    artifacts,
                },
            );
        }
    }

    fn resolve_symphonies(
        &mut self,
        symphonies: Vec<(Doc, Object<SymphonySpec>)>,
        inputs: &[Doc],
        fleet: &mut Fleet,
    ) {
        for (doc, o) in symphonies {
            let name = o.metadata.name.clone();
            let mut s = SymphonyResolver {
                doc: &doc,
                fleet,
                loader: self,
                inputs,
                errors: Vec::new(),
                inherited: Vec::new(),
                edges: Vec::new(),
            };
            let sites = s.selector(o.spec.sites.as_ref());
            let rollback = s.rollback(o.spec.rollback.as_deref());
            let compositions = s.compositions(&name, &o.spec);
            let SymphonyResolver {
                errors,
                inherited,
                edges,
                ..
            } = s;
            if errors.is_empty() && inherited.is_empty() {
                for (from, edge) in edges {
                    self.depends_on.entry(from).or_default().push(edge);
                }
                let symphony = Symphony {
                    name: name.clone(),
                    origin: doc.origin(""),
                    rollout: o.spec.rollout.clone(),
                    rollback,
                    sites,
                    compositions,
                };
                self.warnings
                    .extend(placement_warnings(&doc, &o.spec, &symphony, fleet));
                fleet.symphonies.insert(name, symphony);
            } else {
                self.errors.extend(errors.iter().cloned());
                let all = fleet.failed.entry(name).or_default();
                all.extend(errors);
                all.extend(inherited);
            }
        }
        for ((kind, name), diags) in &self.broken {
            if kind == "Symphony" {
                fleet
                    .failed
                    .entry(name.clone())
                    .or_default()
                    .extend(diags.iter().cloned());
            }
        }
    }

    /// Checks `dependsOn` across symphonies and refuses cycles, naming the
    /// cycle. Runs once every symphony is loaded, so file order does not matter.
    fn check_dependencies(&mut self, fleet: &mut Fleet) {
        let edges = std::mem::take(&mut self.depends_on);
        let mut bad: BTreeMap<String, Vec<Diagnostic>> = BTreeMap::new();
        // Within a symphony, dependencies were checked with its variations.
        for (from, deps) in &edges {
            for e in deps.iter().filter(|e| e.to.symphony != from.symphony) {
                let message = match fleet.symphonies.get(&e.to.symphony) {
                    Some(s) if s.compositions.iter().any(|c| c.id == e.to) => continue,
                    Some(s) => format!(
                        "no variation named {:?} in symphony {:?}{}",
                        e.to.variation,
                        e.to.symphony,
                        did_you_mean(
                            &e.to.variation,
                            s.compositions.iter().map(|c| c.id.variation.as_str())
                        )
                    ),
                    // A failed symphony keeps its last applied state: the
                    // dependent waits for it to be Ready, as for any other.
                    None if fleet.failed.contains_key(&e.to.symphony) => continue,
                    None => format!(
                        "no symphony named {:?}{}",
                        e.to.symphony,
                        did_you_mean(
                            &e.to.symphony,
                            fleet
                                .symphonies
                                .keys()
                                .chain(fleet.failed.keys())
                                .map(String::as_str)
                        )
                    ),
                };
                let d = e.diag(message);
                self.errors.push(d.clone());
                bad.entry(from.symphony.clone()).or_default().push(d);
            }
        }
        // Colour-marking DFS; a back edge closes a cycle.
        let mut state: HashMap<CompositionId, u8> = HashMap::new();
        let mut cycles: Vec<Vec<CompositionId>> = Vec::new();
        for start in edges.keys() {
            let mut stack: Vec<(CompositionId, usize)> = vec![(start.clone(), 0)];
            if state.get(start).copied().unwrap_or(0) != 0 {
                continue;
            }
            state.insert(start.clone(), 1);
            while let Some((node, i)) = stack.pop() {
                let next = edges
                    .get(&node)
                    .and_then(|v| v.get(i))
                    .map(|e| e.to.clone());
                match next {
                    None => {
                        state.insert(node, 2);
                    }
                    Some(n) => {
                        stack.push((node, i + 1));
                        match state.get(&n).copied().unwrap_or(0) {
                            0 if edges.contains_key(&n) => {
                                state.insert(n.clone(), 1);
                                stack.push((n, 0));
                            }
                            1 => {
                                let from = stack.iter().position(|(id, _)| *id == n).unwrap_or(0);
                                let mut cyc: Vec<_> =
                                    stack[from..].iter().map(|(id, _)| id.clone()).collect();
                                cyc.push(n);
                                cycles.push(cyc);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        for cyc in cycles {
            let text = cyc
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" -> ");
            // Point at the entry that starts the cycle, where it is written.
            let Some(edge) = edges
                .get(&cyc[0])
                .and_then(|v| v.iter().find(|e| e.to == cyc[1]))
            else {
                continue;
            };
            let d = edge.diag(format!("dependsOn cycle: {text}"));
            self.errors.push(d.clone());
            let syms: BTreeSet<String> = cyc.iter().map(|c| c.symphony.clone()).collect();
            for s in syms {
                bad.entry(s).or_default().push(d.clone());
            }
        }
        for (s, diags) in bad {
            fleet.symphonies.remove(&s);
            fleet.failed.entry(s).or_default().extend(diags);
        }
    }
}

/// What placement makes of a loaded symphony that its author probably did
/// not mean: a selector that selects nothing (or, without Site objects,
/// means nothing), and compositions whose target is bound to one site while
/// the selector places them on others, where they are dropped.
fn placement_warnings(
    doc: &Doc,
    spec: &SymphonySpec,
    sym: &Symphony,
    fleet: &Fleet,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if !fleet.has_sites() {
        if spec.sites.is_some() {
            out.push(doc.diag(
                "spec.sites",
                "has no effect: the repository defines no Site objects, so everything runs at the one implicit site",
            ));
        }
        return out;
    }
    let selected = sym.sites.select(&fleet.sites);
    if selected.is_empty() {
        out.push(doc.diag(
            "spec.sites",
            format!(
                "selects no site (of {}): symphony {:?} runs nowhere",
                fleet.sites.len(),
                sym.name
            ),
        ));
        return out;
    }
    for (i, comp) in sym.compositions.iter().enumerate() {
        let Some(bound) = fleet
            .targets
            .get(&comp.target)
            .and_then(|t| t.site.as_deref())
        else {
            continue;
        };
        let field = match spec.variations.get(i).and_then(|v| v.target.as_ref()) {
            Some(_) => format!("spec.variations[{i}].target"),
            None if spec.target.is_some() => "spec.target".to_string(),
            None => format!("spec.variations[{i}]"),
        };
        let elsewhere: Vec<&str> = selected.iter().copied().filter(|s| *s != bound).collect();
        let message = if !selected.contains(&bound) {
            format!(
                "target {:?} exists only at site {bound:?}, which spec.sites does not select: {} runs nowhere",
                comp.target, comp.id
            )
        } else if !elsewhere.is_empty() {
            format!(
                "target {:?} exists only at site {bound:?}: {} is not placed at the other selected sites ({})",
                comp.target,
                comp.id,
                name_list(&elsewhere)
            )
        } else {
            continue;
        };
        out.push(doc.diag(&field, message));
    }
    out
}

/// `a, b, c and 7 more`: a message names a few sites, not a thousand.
fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut s = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Resolves one symphony's variations into compositions, collecting errors.
struct SymphonyResolver<'a> {
    doc: &'a Doc,
    fleet: &'a Fleet,
    loader: &'a Loader,
    inputs: &'a [Doc],
    /// Errors in this symphony's own file.
    errors: Vec<Diagnostic>,
    /// Errors of objects it refers to: they fail it, but are reported where they are.
    inherited: Vec<Diagnostic>,
    /// `dependsOn` entries by the composition that has them.
    edges: Vec<(CompositionId, Edge)>,
}

impl SymphonyResolver<'_> {
    fn err(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(self.doc.diag(field, message));
    }

    /// The name of the one invalid object of `kind`, when there is exactly one.
    fn only_broken(&self, kind: &str) -> Option<String> {
        let mut names = self.loader.broken.keys().filter(|(k, _)| k == kind);
        match (names.next(), names.next()) {
            (Some((_, name)), None) => Some(name.clone()),
            _ => None,
        }
    }

    /// Checks a reference to an object of `kind`; records why it cannot be used.
    fn reference(
        &mut self,
        kind: &str,
        name: &str,
        field: &str,
        exists: bool,
        known: Vec<&str>,
    ) -> bool {
        if exists {
            return true;
        }
        if let Some(ds) = self
            .loader
            .broken
            .get(&(kind.to_string(), name.to_string()))
        {
            let mut ds = ds.clone();
            for d in &mut ds {
                d.message = format!(
                    "{kind} {name:?} (used at {}:{}) is invalid: {}",
                    self.doc.file,
                    self.doc.lines.line(field).unwrap_or(0),
                    d.message
                );
            }
            self.inherited.extend(ds);
            return false;
        }
        let failed = self.loader.failed_to_load(kind, name);
        self.err(
            field,
            format!(
                "no {kind} named {name:?}{}{failed}",
                did_you_mean(name, known)
            ),
        );
        false
    }

    /// Type-checks `spec.sites`; absent selects every site.
    fn selector(&mut self, spec: Option<&SiteSelectorSpec>) -> SiteSelector {
        let Some(spec) = spec else {
            return SiteSelector::default();
        };
        site_selector(
            self.doc,
            self.fleet,
            self.loader,
            spec,
            "spec.sites",
            &mut self.errors,
        )
    }

    /// `spec.rollback`: off when absent.
    fn rollback(&mut self, spec: Option<&str>) -> RollbackPolicy {
        let Some(value) = spec else {
            return RollbackPolicy::Off;
        };
        RollbackPolicy::parse(value).unwrap_or_else(|| {
            self.errors.push(self.doc.diag(
                "spec.rollback",
                format!(
                    "unknown value {value:?}{}; one of {}",
                    did_you_mean(value, RollbackPolicy::ALL.iter().copied()),
                    RollbackPolicy::ALL.join(", ")
                ),
            ));
            RollbackPolicy::Off
        })
    }

    fn compositions(&mut self, symphony: &str, spec: &SymphonySpec) -> Vec<Composition> {
        let fleet = self.fleet;
        let targets: Vec<&str> = fleet.targets.keys().map(String::as_str).collect();
        let windows: Vec<&str> = fleet.windows.keys().map(String::as_str).collect();
        let synths: Vec<&str> = fleet.synthesizers.keys().map(String::as_str).collect();
        if let Some(t) = &spec.target {
            self.reference(
                "Target",
                t,
                "spec.target",
                fleet.targets.contains_key(t),
                targets.clone(),
            );
        }
        if let Some(w) = &spec.window {
            self.reference(
                "MaintenanceWindow",
                w,
                "spec.window",
                fleet.windows.contains_key(w),
                windows.clone(),
            );
        }
        let base_env = self.env(&spec.synthesis_env, "spec.synthesisEnv");
        let base_bindings = self.bindings(&spec.bindings, "spec.bindings");

        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, v) in spec.variations.iter().enumerate() {
            let at = format!("spec.variations[{i}]");
            let f = |s: &str| position::join(&at, s);
            let (name, name_field) = match &v.name {
                Some(n) => (n.clone(), f("name")),
                None => (v.synthesizer.name.clone(), f("synthesizer.name")),
            };
            if let Err(m) = check_name(&name) {
                self.err(&name_field, m);
            } else if let Some(first) = seen.get(&name) {
                let line = self
                    .doc
                    .lines
                    .line(&format!("spec.variations[{first}]"))
                    .unwrap_or(0);
                // The user may never have written a name: say where it comes from.
                let hint = match v.name {
                    Some(_) => "",
                    None => "; without `name`, a variation is named after its synthesizer",
                };
                self.err(
                    &name_field,
                    format!("duplicate variation name {name:?} (also at line {line}){hint}"),
                );
            }
            seen.insert(name.clone(), i);
            let sy = &v.synthesizer.name;
            self.reference(
                "Synthesizer",
                sy,
                &f("synthesizer.name"),
                fleet.synthesizers.contains_key(sy),
                synths.clone(),
            );

            let target = match (&v.target, &spec.target) {
                (Some(t), _) => {
                    self.reference(
                        "Target",
                        t,
                        &f("target"),
                        fleet.targets.contains_key(t),
                        targets.clone(),
                    );
                    t.clone()
                }
                (None, Some(t)) => t.clone(),
                (None, None) if fleet.targets.len() == 1 => targets[0].to_string(),
                // The one target the repository defines is invalid: that is
                // the error, reported where the target is.
                (None, None)
                    if fleet.targets.is_empty() && self.only_broken("Target").is_some() =>
                {
                    let name = self.only_broken("Target").unwrap_or_default();
                    self.reference("Target", &name, &at, false, vec![]);
                    name
                }
                (None, None) => {
                    self.err(&at, format!(
                        "no target: set spec.target or {at}.target (the repository defines {} targets)",
                        fleet.targets.len()
                    ));
                    String::new()
                }
            };
            if let Some(w) = &v.window {
                self.reference(
                    "MaintenanceWindow",
                    w,
                    &f("window"),
                    fleet.windows.contains_key(w),
                    windows.clone(),
                );
            }
            let mut env = base_env.clone();
            env.extend(self.env(&v.synthesis_env, &f("synthesisEnv")));
            let mut bindings = base_bindings.clone();
            bindings.extend(self.bindings(&v.bindings, &f("bindings")));
            let mut gates = Vec::new();
            for (j, g) in v.scheduling_gates.iter().enumerate() {
                if g.name.trim().is_empty() {
                    self.err(
                        &f(&format!("schedulingGates[{j}].name")),
                        "must not be empty",
                    );
                }
                gates.push(g.name.clone());
            }
            let mut depends_on = Vec::new();
            for (j, d) in v.depends_on.iter().enumerate() {
                let field = f(&format!("dependsOn[{j}].variation"));
                if let Some(id) = self.dependency(symphony, &spec.variations, &d.variation, &field)
                {
                    self.edges.push((
                        CompositionId::new(symphony, &name),
                        Edge {
                            to: id.clone(),
                            origin: self.doc.origin(&field),
                            field,
                        },
                    ));
                    depends_on.push(id);
                }
            }
            out.push(Composition {
                id: CompositionId::new(symphony, &name),
                origin: self.doc.origin(&at),
                synthesizer: sy.clone(),
                env,
                bindings,
                annotations: v.annotations.clone(),
                labels: v.labels.clone(),
                target,
                window: v.window.clone().or_else(|| spec.window.clone()),
                scheduling_gates: gates,
                depends_on,
                optional: v.optional,
                site: None,
            });
        }
        out
    }

    fn dependency(
        &mut self,
        symphony: &str,
        variations: &[Variation],
        dep: &str,
        field: &str,
    ) -> Option<CompositionId> {
        let id = if dep.contains('/') {
            match dep.parse::<CompositionId>() {
                Ok(id) => id,
                Err(m) => {
                    self.err(field, m);
                    return None;
                }
            }
        } else {
            CompositionId::new(symphony, dep)
        };
        if id.symphony == symphony {
            let names: Vec<String> = variations
                .iter()
                .map(|v| v.name.clone().unwrap_or_else(|| v.synthesizer.name.clone()))
                .collect();
            if !names.contains(&id.variation) {
                let known: Vec<&str> = names.iter().map(String::as_str).collect();
                self.err(
                    field,
                    format!(
                        "no variation named {:?} in symphony {symphony:?}{}",
                        id.variation,
                        did_you_mean(&id.variation, known)
                    ),
                );
                return None;
            }
        }
        // Other symphonies may not be loaded yet: see `Loader::check_dependencies`.
        Some(id)
    }

    fn env(&mut self, vars: &[EnvVar], at: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (i, v) in vars.iter().enumerate() {
            let field = format!("{at}[{i}].name");
            if !is_identifier(&v.name) {
                self.err(
                    &field,
                    format!(
                        "{:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                        v.name
                    ),
                );
            } else if out.insert(v.name.clone(), v.value.clone()).is_some() {
                self.err(&field, format!("duplicate variable {:?}", v.name));
            }
        }
        out
    }

    fn bindings(&mut self, bindings: &[Binding], at: &str) -> BTreeMap<String, Bound> {
        let mut out = BTreeMap::new();
        for (i, b) in bindings.iter().enumerate() {
            let at = format!("{at}[{i}]");
            if b.key.is_empty()
                || !b
                    .key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                self.err(
                    &format!("{at}.key"),
                    format!("{:?} is not a binding key ([A-Za-z0-9_-]+)", b.key),
                );
                continue;
            }
            if out.contains_key(&b.key) {
                self.err(
                    &format!("{at}.key"),
                    format!("duplicate binding {:?}", b.key),
                );
                continue;
            }
            let r = &b.resource;
            let ns = r.namespace.as_deref().unwrap_or("default");
            let matches: Vec<&Doc> = self
                .inputs
                .iter()
                .filter(|d| {
                    d.str_at(&["metadata", "name"]) == Some(r.name.as_str())
                        && d.str_at(&["metadata", "namespace"]).unwrap_or("default") == ns
                        && r.kind
                            .as_deref()
                            .is_none_or(|k| d.str_at(&["kind"]) == Some(k))
                        && r.api_version
                            .as_deref()
                            .is_none_or(|a| d.str_at(&["apiVersion"]) == Some(a))
                })
                .collect();
            match matches.as_slice() {
                [d] => match serde_json::to_value(&d.value) {
                    Ok(object) => {
                        out.insert(
                            b.key.clone(),
                            Bound {
                                origin: d.origin(""),
                                object,
                            },
                        );
                    }
                    Err(e) => self.err(
                        &format!("{at}.resource"),
                        format!("bound object at {} cannot be used: {e}", d.origin("")),
                    ),
                },
                [] => self.err(
                    &format!("{at}.resource.name"),
                    format!(
                        "no object named {:?} in namespace {ns:?} in the repository",
                        r.name
                    ),
                ),
                many => {
                    let places: Vec<String> =
                        many.iter().map(|d| d.origin("").to_string()).collect();
                    self.err(
                        &format!("{at}.resource"),
                        format!(
                            "{:?} in namespace {ns:?} is ambiguous: {}; set resource.kind",
                            r.name,
                            places.join(", ")
                        ),
                    );
                }
            }
        }
        out
    }
}

/// Type-checks a site selector written at `at` (a Symphony's `spec.sites`,
/// a promote's `sites`): label syntax, operators, and `names` that no Site
/// has (only when the repository has Sites).
fn site_selector(
    doc: &Doc,
    fleet: &Fleet,
    loader: &Loader,
    spec: &SiteSelectorSpec,
    at: &str,
    errors: &mut Vec<Diagnostic>,
) -> SiteSelector {
    let mut err = |field: &str, message: String| errors.push(doc.diag(field, message));
    for (k, v) in &spec.match_labels {
        let field = position::join(&position::join(at, "matchLabels"), k);
        if let Err(m) = check_label_key(k).and_then(|()| check_label_value(v)) {
            err(&field, m);
        }
    }
    let mut match_expressions = Vec::new();
    for (i, e) in spec.match_expressions.iter().enumerate() {
        let at = |f: &str| format!("{at}.matchExpressions[{i}].{f}");
        if let Err(m) = check_label_key(&e.key) {
            err(&at("key"), m);
        }
        let Some(operator) = Operator::parse(&e.operator) else {
            err(
                &at("operator"),
                format!(
                    "unknown operator {:?}{}; one of {}",
                    e.operator,
                    did_you_mean(&e.operator, Operator::ALL),
                    Operator::ALL.join(", ")
                ),
            );
            continue;
        };
        if operator.takes_values() && e.values.is_empty() {
            err(
                &at("operator"),
                format!("{operator} needs a non-empty `values`"),
            );
        } else if !operator.takes_values() && !e.values.is_empty() {
            err(&at("values"), format!("{operator} takes no `values`"));
        }
        for (j, v) in e.values.iter().enumerate() {
            if let Err(m) = check_label_value(v) {
                err(&at(&format!("values[{j}]")), m);
            }
        }
        match_expressions.push(Requirement {
            key: e.key.clone(),
            operator,
            values: e.values.iter().cloned().collect(),
        });
    }
    let sites = &fleet.sites;
    if let Some(names) = &spec.names {
        for (i, n) in names.iter().enumerate() {
            if sites.is_empty() || sites.contains_key(n) {
                continue;
            }
            let field = format!("{at}.names[{i}]");
            if loader.broken.contains_key(&("Site".to_string(), n.clone())) {
                err(&field, format!("Site {n:?} is invalid (see its own error)"));
            } else {
                err(
                    &field,
                    format!(
                        "no Site named {n:?}{}",
                        did_you_mean(n, sites.keys().map(String::as_str))
                    ),
                );
            }
        }
    }
    SiteSelector {
        match_labels: spec.match_labels.clone(),
        match_expressions,
        names: spec.names.as_ref().map(|n| n.iter().cloned().collect()),
    }
}

/// Deserializes a document into a typed object, locating any error.
fn typed<S: DeserializeOwned>(doc: &Doc) -> Result<Object<S>, Diagnostic> {
    serde_path_to_error::deserialize(doc.value.clone()).map_err(|e| {
        let mut field = e.path().to_string();
        if field == "." {
            field.clear();
        }
        let message = e.inner().to_string();
        // Point at the field itself, not at the mapping that holds (or lacks) it.
        for prefix in ["unknown field `", "missing field `"] {
            if let Some(rest) = message.strip_prefix(prefix) {
                if let Some(name) = rest.split('`').next() {
                    let last = field.rsplit(['.', ']']).next().unwrap_or_default();
                    if last != name {
                        field = position::join(&field, name);
                    }
                }
            }
        }
        doc.diag(&field, message)
    })
}

/// Object and variation names are DNS labels: they become directory names,
/// Kubernetes label values and status file names.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// The Kubernetes target's own settings: pre-pull bound, artifact claim.
fn check_kubernetes(doc: &Doc, k: &super::types::KubernetesSpec) -> Result<(), Diagnostic> {
    if k.pre_pull.max_per_node == Some(0) {
        return Err(doc.diag(
            "spec.kubernetes.prePull.maxPerNode",
            "must be at least 1 (set `enabled: false` to pull nothing at stage)",
        ));
    }
    let Some(a) = &k.artifacts else {
        return Ok(());
    };
    let subdomain = !a.claim.is_empty()
        && a.claim.len() <= 253
        && a.claim.split('.').all(|part| check_name(part).is_ok());
    if !subdomain {
        return Err(doc.diag(
            "spec.kubernetes.artifacts.claim",
            format!(
                "{:?} is not a PersistentVolumeClaim name (lowercase letters, digits, `-` and `.`)",
                a.claim
            ),
        ));
    }
    match (&a.store_url, a.direct) {
        (Some(_), true) => Err(doc.diag(
            "spec.kubernetes.artifacts.storeUrl",
            "set either `storeUrl` (download from fermata's store) or `direct: true` (from each artifact's URL), not both",
        )),
        (None, false) => Err(doc.diag(
            "spec.kubernetes.artifacts",
            "set `storeUrl` (fermata's --listen address as the cluster reaches it) or `direct: true` (the cluster reaches each artifact's URL)",
        )),
        (Some(u), false) if !(u.starts_with("http://") || u.starts_with("https://")) => Err(doc.diag(
            "spec.kubernetes.artifacts.storeUrl",
            format!("{u:?} is not an http:// or https:// URL"),
        )),
        _ => Ok(()),
    }
}

fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid artifact name: letters, digits, '.', '_' and '-'"
        ))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A relative command (`./render.sh`) must lie in the synthesizer's folder,
/// which is all the command gets to see; a bare name is looked up on PATH.
fn check_command(snap: &Snapshot, dir: &str, argv: &[String]) -> Result<(), String> {
    let Some(cmd) = argv.first().filter(|c| !c.is_empty()) else {
        return Err("must name a program".to_string());
    };
    if !cmd.contains('/') {
        return Ok(());
    }
    let path = snap.resolve(dir, cmd).map_err(|e| e.to_string())?;
    if !(dir.is_empty() || path.starts_with(&format!("{dir}/"))) {
        return Err(format!("{cmd:?} is outside the synthesizer's folder {dir:?}, which is all the command runs with"));
    }
    match snap.entry(&path) {
        Some(Entry::File { .. }) => Ok(()),
        _ if snap.in_submodule(&path).is_some() => {
            Err(snap.in_submodule(&path).unwrap_or_default())
        }
        _ => Err(format!(
            "no file {path:?} in the repository at this revision"
        )),
    }
}

/// ` (did you mean "vision"?)` when a known name is close enough.
/// Whether a file that failed to load may be where object `kind` `name`
/// was meant to be defined: its name is the object's, or its text names
/// both the kind and the name.
fn might_define(file: &str, text: &str, kind: &str, name: &str) -> bool {
    let stem = split(file).1.rsplit_once('.').map_or("", |(s, _)| s);
    let word = |w: &str| {
        text.split(|c: char| !(c.is_alphanumeric() || c == '-'))
            .any(|t| t == w)
    };
    stem == name || (word(kind) && word(name))
}

fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    closest(name, known)
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

/// The known name closest to `name`, when one is close enough to be meant.
pub(crate) fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::source::Revision;

    fn snap(files: &[(&str, &str)]) -> Snapshot {
        let entries = files
            .iter()
            .map(|(p, c)| {
                let data = Arc::from(c.as_bytes());
                let e = Entry::File {
                    data,
                    executable: false,
                };
                (p.to_string(), e)
            })
            .collect();
        Snapshot::new(Revision(git2::Oid::ZERO_SHA1), entries)
    }

    const BASE: [(&str, &str); 3] = [
        (
            "t.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: t}\nspec: {directory: {path: t}}\n",
        ),
        (
            "s/app.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {name: app}\nspec: {manifests: ./m}\n",
        ),
        ("s/m/cm.yaml", "kind: ConfigMap\n"),
    ];

    fn symphony(name: &str, depends_on: &str) -> String {
        format!(
            "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: {name}}}\nspec:\n  variations:\n    - synthesizer: {{name: app}}\n      dependsOn: [{{variation: {depends_on}}}]\n"
        )
    }

    /// Errors as `file:line: field: message`.
    fn errors(files: &[(&str, &str)]) -> Vec<String> {
        let files: Vec<_> = BASE.iter().chain(files).copied().collect();
        let loaded = load(&snap(&files), "");
        loaded.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_name_yaml_reads_as_a_number_is_not_missing() {
        let target = |name: &str| {
            format!("apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {{name: {name}}}\nspec: {{directory: {{path: x}}}}\n")
        };
        let cases = [
            ("2024", "must be a string; quote it: name: \"2024\""),
            ("true", "must be a string; quote it: name: \"true\""),
            ("[a]", "must be a string"),
            ("~", "missing field `name`"),
        ];
        for (name, message) in cases {
            assert_eq!(
                errors(&[("x.yaml", &target(name))]),
                [format!("x.yaml:3: metadata.name: {message}")],
                "{name}"
            );
        }
    }

    #[test]
    fn duplicate_default_variation_name_says_where_the_name_comes_from() {
        let s = "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: s}\nspec:\n  variations:\n    - synthesizer: {name: app}\n    - synthesizer: {name: app}\n";
        assert_eq!(
            errors(&[("s.yaml", s)]),
            ["s.yaml:7: spec.variations[1].synthesizer.name: duplicate variation name \"app\" (also at line 6); without `name`, a variation is named after its synthesizer"]
        );
    }

    #[test]
    fn rollback_takes_auto_or_off_and_says_where_otherwise() {
        let s = |v: &str| {
            format!("apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: s}}\nspec:\n  target: t\n  rollback: {v}\n  variations:\n    - synthesizer: {{name: app}}\n")
        };
        assert_eq!(
            errors(&[("s.yaml", &s("autp"))]),
            ["s.yaml:6: spec.rollback: unknown value \"autp\" (did you mean \"auto\"?); one of auto, off"]
        );
        for (v, want) in [("auto", RollbackPolicy::Auto), ("off", RollbackPolicy::Off)] {
            let text = s(v);
            let files: Vec<_> = BASE
                .iter()
                .copied()
                .chain([("s.yaml", text.as_str())])
                .collect();
            let loaded = load(&snap(&files), "");
            assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
            assert_eq!(loaded.fleet.symphonies["s"].rollback, want, "{v}");
        }
    }

    #[test]
    fn depends_on_errors_point_at_the_entry_whatever_the_file_order() {
        let (a, b) = (symphony("a", "b/app"), symphony("b", "a/ap"));
        let want = [
            "2.yaml:7: spec.variations[0].dependsOn[0].variation: no variation named \"ap\" in symphony \"a\" (did you mean \"app\"?)",
        ];
        assert_eq!(errors(&[("1.yaml", &a), ("2.yaml", &b)]), want);
        let want = want.map(|w| w.replace("2.yaml", "0.yaml"));
        assert_eq!(errors(&[("1.yaml", &a), ("0.yaml", &b)]), want);

        let b = symphony("b", "a/app");
        assert_eq!(
            errors(&[("1.yaml", &a), ("2.yaml", &b)]),
            ["1.yaml:7: spec.variations[0].dependsOn[0].variation: dependsOn cycle: a/app -> b/app -> a/app"]
        );
        assert_eq!(
            errors(&[("1.yaml", &symphony("a", "nope/app"))]),
            ["1.yaml:7: spec.variations[0].dependsOn[0].variation: no symphony named \"nope\""]
        );
    }

    const SITES: &str = "apiVersion: fermata.dev/v1alpha1\nkind: Site\nmetadata: {name: plant-a, labels: {ring: canary}}\nspec: {env: [{name: LINES, value: \"4\"}]}\n---\napiVersion: fermata.dev/v1alpha1\nkind: Site\nmetadata: {name: plant-b, labels: {ring: stable}}\nspec: {}\n";

    fn placed(sites: &str) -> String {
        format!("apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: s}}\nspec:\n  target: t\n  sites:\n{sites}  variations:\n    - synthesizer: {{name: app}}\n")
    }

    /// Warnings as `file:line: field: message`.
    fn warnings(files: &[(&str, &str)]) -> Vec<String> {
        let files: Vec<_> = BASE.iter().chain(files).copied().collect();
        let loaded = load(&snap(&files), "");
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.warnings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn site_and_selector_errors_point_at_the_field() {
        let cases: [(&str, String, &str); 7] = [
            (
                "unknown operator",
                placed("    matchExpressions: [{key: ring, operator: Inn, values: [canary]}]\n"),
                "s.yaml:7: spec.sites.matchExpressions[0].operator: unknown operator \"Inn\" (did you mean \"In\"?); one of In, NotIn, Exists, DoesNotExist",
            ),
            (
                "In without values",
                placed("    matchExpressions: [{key: ring, operator: NotIn}]\n"),
                "s.yaml:7: spec.sites.matchExpressions[0].operator: NotIn needs a non-empty `values`",
            ),
            (
                "Exists with values",
                placed("    matchExpressions:\n      - key: ring\n        operator: Exists\n        values: [x]\n"),
                "s.yaml:10: spec.sites.matchExpressions[0].values: Exists takes no `values`",
            ),
            (
                "names an unknown site",
                placed("    names: [plant-a, plant-c]\n"),
                "s.yaml:7: spec.sites.names[1]: no Site named \"plant-c\" (did you mean \"plant-a\"?)",
            ),
            (
                "invalid label key",
                placed("    matchLabels: {\"-ring\": canary}\n"),
                "s.yaml:7: spec.sites.matchLabels.-ring: \"-ring\" is not a valid label key: an optional DNS prefix and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ),
            (
                "target at an unknown site",
                "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: t2}\nspec:\n  site: plant-c\n  directory: {path: t2}\n".to_string(),
                "s.yaml:5: spec.site: no Site named \"plant-c\" (did you mean \"plant-a\"?)",
            ),
            (
                "site env and labels",
                bad_site(),
                "s.yaml:3: metadata.labels.ring: \"a b\" is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ),
        ];
        for (name, file, want) in cases {
            let got = errors(&[("sites.yaml", SITES), ("s.yaml", &file)]);
            assert_eq!(
                got.first().map(String::as_str),
                Some(want),
                "{name}: {got:#?}"
            );
        }
        // Both problems of a bad Site, each at its own line.
        let got = errors(&[("s.yaml", &bad_site())]);
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(
            got[1].starts_with("s.yaml:4: spec.env[0].name: \"1X\" is not a variable name"),
            "{got:#?}"
        );
    }

    fn bad_site() -> String {
        "apiVersion: fermata.dev/v1alpha1\nkind: Site\nmetadata: {name: plant-c, labels: {ring: \"a b\"}}\nspec: {env: [{name: 1X}]}\n".to_string()
    }

    #[test]
    fn a_target_at_an_unknown_site_fails_and_so_does_what_uses_it() {
        let target = "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: t}\nspec:\n  site: nowhere\n  directory: {path: t}\n";
        let sym = "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: s}\nspec:\n  target: t\n  variations: [{synthesizer: {name: app}}]\n";
        let files = [BASE[1], BASE[2], ("t.yaml", target), ("s.yaml", sym)];
        let loaded = load(&snap(&files), "");
        let errs: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errs,
            ["t.yaml:5: spec.site: no Site named \"nowhere\": the repository defines no Site objects"]
        );
        assert!(loaded.fleet.targets.is_empty());
        assert!(
            loaded.fleet.failed.contains_key("s"),
            "the symphony fails with its target"
        );
    }

    #[test]
    fn placement_warnings() {
        let bound = "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: a-line}\nspec:\n  site: plant-a\n  directory: {path: a}\n";
        let cases: [(&str, String, &[&str]); 5] = [
            ("selects everything", placed("    matchLabels: {}\n"), &[]),
            (
                "selects nothing",
                placed("    matchLabels: {ring: beta}\n"),
                &["s.yaml:6: spec.sites: selects no site (of 2): symphony \"s\" runs nowhere"],
            ),
            (
                "names: [] selects nothing",
                placed("    names: []\n"),
                &["s.yaml:6: spec.sites: selects no site (of 2): symphony \"s\" runs nowhere"],
            ),
            (
                "target of one site, selected elsewhere too",
                "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: s}\nspec:\n  variations:\n    - synthesizer: {name: app}\n      target: a-line\n".to_string(),
                &["s.yaml:7: spec.variations[0].target: target \"a-line\" exists only at site \"plant-a\": s/app is not placed at the other selected sites (plant-b)"],
            ),
            (
                "target of a site not selected",
                "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: s}\nspec:\n  target: a-line\n  sites: {names: [plant-b]}\n  variations:\n    - synthesizer: {name: app}\n".to_string(),
                &["s.yaml:5: spec.target: target \"a-line\" exists only at site \"plant-a\", which spec.sites does not select: s/app runs nowhere"],
            ),
        ];
        for (name, file, want) in cases {
            let got = warnings(&[("sites.yaml", SITES), ("b.yaml", bound), ("s.yaml", &file)]);
            assert_eq!(got, want, "{name}");
        }
        // Without Site objects a selector means nothing: said once, not an error.
        assert_eq!(
            warnings(&[("s.yaml", &placed("    names: [x]\n"))]),
            ["s.yaml:6: spec.sites: has no effect: the repository defines no Site objects, so everything runs at the one implicit site"]
        );
    }

    #[test]
    fn a_file_that_failed_to_load_may_define_what_its_name_or_text_says() {
        let text = "kind: Synthesizer\nmetadata: {name: s1}\nspec: [\n";
        assert!(might_define(
            "synthesizers/x.yaml",
            text,
            "Synthesizer",
            "s1"
        ));
        assert!(might_define(
            "synthesizers/s1.yaml",
            "",
            "Synthesizer",
            "s1"
        ));
        assert!(
            !might_define("synthesizers/x.yaml", text, "Target", "s1"),
            "another kind"
        );
        assert!(
            !might_define("synthesizers/x.yaml", text, "Synthesizer", "s"),
            "whole words only"
        );
        assert!(!might_define(
            "synthesizers/s10.yaml",
            "",
            "Synthesizer",
            "s1"
        ));
    }
}
