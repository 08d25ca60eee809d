//! `fermata render`: the rendered resources of each composition, annotated
//! with the composition and its digest.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use serde_json::{json, Value};

use super::{Output, RepoArgs};
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
}

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
    let limits = a.limits.limits();
    let mut rendered = Vec::new();
    for comp in fleet.compositions() {
        if a.composition.as_ref().is_some_and(|id| *id != comp.id) {
            continue;
        }
        match synth::render(&snap, fleet, comp, &limits) {
            Ok(r) => rendered.push(r),
            Err(e) => errors.push(e.diagnostic(fleet, comp)),
        }
    }
    match a.repo.output {
        Output::Text => {
            for r in &rendered {
                for obj in annotated(r) {
                    out!("---\n{}", serde_yaml::to_string(&obj)?);
                }
            }
        }
        Output::Json => {
            let out: Vec<Value> = rendered
                .iter()
                .map(|r| {
                    json!({
                        "composition": r.id,
                        "digest": r.digest,
                        "resources": annotated(r),
                    })
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

/// The resources of `r`, each annotated with its composition and digest.
fn annotated(r: &Rendered) -> Vec<Value> {
    r.resources
        .iter()
        .map(|res| {
            let mut o = res.object.clone();
            if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                let ann = meta.entry("annotations").or_insert_with(|| json!({}));
                if let Some(ann) = ann.as_object_mut() {
                    ann.insert(COMPOSITION_ANNOTATION.into(), json!(r.id));
                    ann.insert(DIGEST_ANNOTATION.into(), json!(r.digest));
                }
            }
            o
        })
        .collect()
}
