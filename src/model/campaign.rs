//! Campaigns and activations as the rest of fermata uses them (DESIGN.md
//! section 10): every reference checked, every duration parsed and every
//! CEL expression compiled by [`super::load`]. Pure values.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{Origin, SiteSelector};

/// A staged rollout: its stages by name, and where it starts.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub name: String,
    pub origin: Origin,
    pub self_driving: bool,
    pub first_stage: String,
    /// `Some(1)` queues activations; `None`: unlimited.
    pub concurrency: Option<u32>,
    /// In file order.
    pub stages: Vec<Stage>,
}

impl Campaign {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// Every input its promotes' values refer to (`${inputs.NAME}`): what an
    /// activation must give.
    pub fn inputs_used(&self) -> BTreeSet<String> {
        self.stages
            .iter()
            .filter_map(|s| match &s.action {
                Action::Promote { set, .. } => Some(set.values()),
                _ => None,
            })
            .flatten()
            .flat_map(|v| template_inputs(v))
            .map(str::to_string)
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub origin: Origin,
    pub action: Action,
    /// Fans a promote (and its await) out in batches.
    pub batch: Option<Batch>,
    /// Run by this site's agent (remote execution).
    pub site: Option<String>,
    pub next: Vec<Next>,
}

/// What a stage does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Set `set` (templates over `${inputs.NAME}`) in `spec.env` of every
    /// selected Site; then, with `await`, wait for its sites.
    Promote {
        sites: SiteSelector,
        set: BTreeMap<String, String>,
        pull_request: bool,
        await_: Option<Await>,
    },
    Approval {
        approvers: u32,
    },
    Verify(Verify),
    Wait {
        duration: Duration,
    },
    /// Restore what the promotes of `stage` replaced.
    Revert {
        stage: String,
    },
}

impl Action {
    /// The stage kind's name, as users write it.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Promote { .. } => "promote",
            Action::Approval { .. } => "approval",
            Action::Verify(_) => "verify",
            Action::Wait { .. } => "wait",
            Action::Revert { .. } => "revert",
        }
    }
}

/// Wait until every affected composition at every promoted site is in
/// `state` (`installed`, `staged` or `removed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Await {
    pub state: crate::status::State,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    Http {
        url: String,
        status: u16,
        body: Option<String>,
        timeout: Duration,
    },
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

/// How many sites: a share of the selection (rounded up) or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Percent(u32),
    Count(usize),
}

impl Amount {
    /// Of `total` sites.
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Percent(p) => (total * p as usize).div_ceil(100),
            Amount::Count(n) => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Sites per batch (at least 1).
    pub size: Amount,
    /// Failed sites tolerated; past it the fan-out stops.
    pub failure_tolerance: Amount,
}

#[derive(Debug, Clone)]
pub struct Next {
    /// `None`: always.
    pub when: Option<Expr>,
    pub stage: String,
}

/// A CEL expression, compiled when loaded (so a syntax error is a load
/// error with its file and line), evaluated over `inputs`, `outputs` and
/// `sites` as JSON values.
#[derive(Clone)]
pub struct Expr {
    pub source: String,
    /// Shared: a compiled program cannot be cloned, and a fleet is.
    program: Arc<cel::Program>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl Expr {
    /// Compiles `source`; the error is the parser's first, with its line and
    /// column in the expression (the ones after it mostly follow from it).
    pub fn compile(source: &str) -> Result<Expr, String> {
        match cel::Program::compile(source) {
            Ok(program) => Ok(Expr {
                source: source.to_string(),
                program: Arc::new(program),
            }),
            Err(e) => Err(match e.errors.first() {
                Some(e) => {
                    let (line, column) = e.pos;
                    let at = if source.contains('\n') {
                        format!("line {line}, column {column}")
                    } else {
                        format!("column {column}")
                    };
                    format!("{} (at {at} of {source:?})", e.msg)
                }
                None => format!("{source:?} does not compile"),
            }),
        }
    }

    /// Evaluates the expression with each top-level key of `vars` (an object:
    /// `inputs`, `outputs`, `sites`) as a variable. Anything but a bool, a
    /// missing key or a type mismatch is an error, never a silent `false`:
    /// a selector that cannot be decided must not pick a stage.
    pub fn eval_bool(&self, vars: &serde_json::Value) -> Result<bool, String> {
        let serde_json::Value::Object(vars) = vars else {
            return Err(format!(
                "variables must be an object of names, not {}",
                json_kind(vars)
            ));
        };
        let mut ctx = cel::Context::default();
        for (name, value) in vars {
            ctx.add_variable_from_value(name.as_str(), to_cel(value));
        }
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "{:?} gave {} {}, not a bool",
                self.source,
                other.type_of(),
                show(&other)
            )),
            Err(e) => Err(format!("{:?}: {e}", self.source)),
        }
    }
}

/// JSON as CEL sees it: integers are `int` (so `outputs.failed == 0` holds
/// for a JSON `0`), `uint` only past `i64`, other numbers `double`.
fn to_cel(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => cel::Value::String(Arc::new(s.clone())),
        J::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        J::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), to_cel(v)))
            .collect::<HashMap<String, cel::Value>>()
            .into(),
    }
}

/// A result in a message: its JSON where it has one.
fn show(v: &cel::Value) -> String {
    match v {
        cel::Value::Int(i) => i.to_string(),
        cel::Value::UInt(u) => format!("{u}u"),
        cel::Value::Float(f) => f.to_string(),
        cel::Value::String(s) => format!("{:?}", s.as_str()),
        cel::Value::Null => "null".to_string(),
        other => format!("{other:?}"),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The inputs a template refers to as `${inputs.NAME}`, in order (repeats
/// included). `$${` is a literal `${`, as in manifests; any other `${...}`
/// is left to whatever reads the value later (synthesis).
pub fn template_inputs(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    scan(template, |piece| {
        if let Piece::Input(name) = piece {
            out.push(name);
        }
    });
    out
}

/// `template` with every `${inputs.NAME}` replaced by its input; an input
/// not given is an error naming it.
pub fn expand_inputs(template: &str, inputs: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut missing = Vec::new();
    scan(template, |piece| match piece {
        Piece::Text(t) => out.push_str(t),
        Piece::Input(name) => match inputs.get(name) {
            Some(v) => out.push_str(v),
            None => missing.push(name),
        },
    });
    match missing.as_slice() {
        [] => Ok(out),
        names => Err(format!(
            "no input {} (given: {})",
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            if inputs.is_empty() {
                "none".to_string()
            } else {
                inputs.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        )),
    }
}

enum Piece<'a> {
    Text(&'a str),
    Input(&'a str),
}

fn scan<'a>(template: &'a str, mut each: impl FnMut(Piece<'a>)) {
    const OPEN: &str = "${inputs.";
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        let (before, from) = rest.split_at(i);
        each(Piece::Text(before));
        if let Some(after) = from.strip_prefix("$${") {
            each(Piece::Text("${"));
            rest = after;
        } else if let Some((name, after)) = from
            .strip_prefix(OPEN)
            .and_then(|r| r.split_once('}'))
            .filter(|(name, _)| is_input_name(name))
        {
            each(Piece::Input(name));
            rest = after;
        } else {
            each(Piece::Text("$"));
            rest = &from[1..];
        }
    }
    each(Piece::Text(rest));
}

/// Input names are CEL identifiers, so `inputs.NAME` works in a `when`.
pub fn is_input_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One run of a campaign, as committed (`kind: Activation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub name: String,
    pub origin: Origin,
    pub campaign: String,
    pub inputs: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_expression_is_shared_across_threads_with_its_fleet() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Expr>();
    }

    #[test]
    fn eval_bool() {
        let vars = json!({
            "inputs": {"model": "v4", "share": "10"},
            "outputs": {"failed": 0, "succeeded": 3, "ratio": 0.25, "reasons": {"plant-a": "ok"}},
            "sites": ["plant-a", "plant-b", "plant-c", "plant-d"],
        });
        let cases: &[(&str, Result<bool, &str>)] = &[
            ("outputs.failed == 0", Ok(true)),
            ("outputs.failed > 0", Ok(false)),
            ("outputs.succeeded + outputs.failed >= 3", Ok(true)),
            ("outputs.ratio < 0.5", Ok(true)),
            ("size(sites) > 3", Ok(true)),
            ("'plant-b' in sites", Ok(true)),
            ("inputs.model == \"v4\"", Ok(true)),
            ("inputs.model.startsWith('v')", Ok(true)),
            ("int(inputs.share) == 10", Ok(true)),
            ("outputs.reasons['plant-a'] == 'ok'", Ok(true)),
            ("has(outputs.pending)", Ok(false)),
            ("sites.all(s, s.startsWith('plant-'))", Ok(true)),
            ("true", Ok(true)),
            // Errors, never a silent false.
            (
                "outputs.failed",
                Err("\"outputs.failed\" gave int 0, not a bool"),
            ),
            ("inputs.model", Err("gave string \"v4\", not a bool")),
            ("outputs.missing == 0", Err("No such key: missing")),
            ("nothing == 1", Err("Undeclared reference to 'nothing'")),
            ("inputs.model > 3", Err("\"inputs.model > 3\": ")),
        ];
        for (source, want) in cases {
            let expr = Expr::compile(source).unwrap_or_else(|e| panic!("{source}: {e}"));
            let got = expr.eval_bool(&vars);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{source}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{source}: {g:?} lacks {w:?}"),
                _ => panic!("{source}: want {want:?}, got {got:?}"),
            }
        }
        let expr = Expr::compile("true").expect("compiles");
        assert_eq!(
            expr.eval_bool(&json!([1])),
            Err("variables must be an object of names, not a list".to_string())
        );
    }

    #[test]
    fn compile_errors_say_where() {
        let cases = [
            ("outputs.failed ==", "at column"),
            ("outputs.failed == 0 &&\n(", "at line 2, column"),
            ("size(sites", "at column"),
        ];
        for (source, want) in cases {
            let e = Expr::compile(source).expect_err(source);
            assert!(e.contains(want), "{source}: {e}");
        }
    }

    #[test]
    fn templates_over_inputs() {
        let inputs: BTreeMap<String, String> = [("model".to_string(), "v4".to_string())]
            .into_iter()
            .collect();
        let cases: &[(&str, &[&str], Result<&str, &str>)] = &[
            ("${inputs.model}", &["model"], Ok("v4")),
            (
                "m-${inputs.model}-${inputs.model}",
                &["model", "model"],
                Ok("m-v4-v4"),
            ),
            ("$${inputs.model}", &[], Ok("${inputs.model}")),
            ("${site.name}/$", &[], Ok("${site.name}/$")),
            ("${inputs.bad-name}", &[], Ok("${inputs.bad-name}")),
            (
                "${inputs.tag}",
                &["tag"],
                Err("no input \"tag\" (given: model)"),
            ),
        ];
        for (template, names, want) in cases {
            assert_eq!(template_inputs(template), *names, "{template}");
            assert_eq!(
                expand_inputs(template, &inputs),
                want.map(str::to_string).map_err(str::to_string),
                "{template}"
            );
        }
    }
}
