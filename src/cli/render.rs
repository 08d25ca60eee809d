//! `fermata render`: the rendered resources of each composition, annotated
//! with the composition and its digest.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use serde_json::{json, Value};

use super::{Output, RepoArgs};
use crate::model::wellknown::SITE as SITE_ANNOTATION;
use crate::model::CompositionId;
use crate::synth::{self, Rendered, COMPOSITION_ANNOTATION, DIGEST_ANNOTATION};

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Only this composition, as SYMPHONY/VARIATION.
    #[arg(long)]
    pub composition: Option<CompositionId>,
    #[command(flatten)]
    pub limits: super::LimitArgs,
    #[command(flatten)]
    pub site: super::SiteArgs,
}

/// Without `--site` on a repository with Site objects, every site's view in
/// turn, each resource annotated with its site.
pub fn run(a: &RenderArgs) -> anyhow::Result<ExitCode> {
    let (snap, loaded) = a.repo.load()?;
    let fleet = &loaded.fleet;
    let mut errors = loaded.errors.clone();
    if let Some(id) = &a.composition {
        if fleet.composition(id).is_none() {
            if let Some(why) = fleet.failed.get(&id.symphony) {
                for d in why {
                    errln!("{d}");
                }
                bail!("composition {id} failed to load");
            }
            bail!("no composition {id} at {}", snap.revision.short());
        }
    }
    let views = a.site.views(fleet)?;
    if let (Some(id), Some(site)) = (&a.composition, &a.site.site) {
        if views.iter().all(|(_, v)| v.composition(id).is_none()) {
            bail!(
                "composition {id} is not placed at site {site} (it is at: {})",
                fleet.sites_of(id).join(", ")
            );
        }
    }
    let limits = a.limits.limits();
    let mut rendered = Vec::new();
    for (site, view) in &views {
        for comp in view.compositions() {
            if a.composition.as_ref().is_some_and(|id| *id != comp.id) {
                continue;
            }
            match synth::render(&snap, view, comp, &limits) {
                Ok(r) => rendered.push((site.as_deref(), r)),
                Err(e) => errors.push(e.diagnostic(view, comp)),
            }
        }
    }
    match a.repo.output {
        Output::Text => {
            for (site, r) in &rendered {
                for obj in annotated(r, *site) {
                    out!("---\n{}", serde_yaml::to_string(&obj)?);
                }
            }
        }
        Output::Json => {
            let out: Vec<Value> = rendered
                .iter()
                .map(|(site, r)| {
                    let mut o = json!({
                        "composition": r.id,
                        "digest": r.digest,
                        "resources": annotated(r, *site),
                    });
                    if let Some(site) = site {
                        o["site"] = json!(site);
                    }
                    o
                })
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(&json!({"compositions": out, "errors": errors}))?
            );
        }
    }
    if a.repo.output == Output::Text {
        for e in &errors {
            errln!("{e}");
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The resources of `r`, each annotated with its composition and digest,
/// and the site it was rendered for, if any.
fn annotated(r: &Rendered, site: Option<&str>) -> Vec<Value> {
    r.resources
        .iter()
        .map(|res| {
            let mut o = res.object.clone();
            if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                let ann = meta.entry("annotations").or_insert_with(|| json!({}));
                if let Some(ann) = ann.as_object_mut() {
                    ann.insert(COMPOSITION_ANNOTATION.into(), json!(r.id));
                    ann.insert(DIGEST_ANNOTATION.into(), json!(r.digest));
                    if let Some(site) = site {
                        ann.insert(SITE_ANNOTATION.into(), json!(site));
                    }
                }
            }
            o
        })
        .collect()
}
