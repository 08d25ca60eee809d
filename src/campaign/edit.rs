//! Setting a Site's env values in the text of its file, keeping every other
//! byte: comments, key order, quoting, indentation, line endings and the
//! file's other documents stay exactly as the user wrote them, as Kargo's
//! yaml-update step does. A campaign's commit then shows in `git diff` as
//! the values it set and nothing else, and [`restore`] gives back the very
//! bytes [`set_env`] replaced.
//!
//! Positions come from yaml-rust2's parser events (the parser
//! `model::position` uses); the end of a scalar is found by scanning its
//! single line. Every edit is checked by parsing the result again: the Site's
//! document must equal the original with exactly the intended env, and every
//! other document must be unchanged. An edit that does not check out is an
//! [`EditError`], never a wrong file.
//!
//! Supported: `spec.env` as a block list (`- name: K` / `- {name: K, ...}`
//! items, any indentation) or a flow list (`env: [{name: K, value: V}]`,
//! also spread over lines); values plain, single- or double-quoted, on one
//! line; `env` absent (added as `env: [{...}]` at the end of `spec`, block or
//! flow); `spec` absent (added as `spec: {env: [...]}`). Not supported (an
//! `Unsupported` error naming the line): block scalars (`|`, `>`) and
//! multi-line values, an entry without `value`, aliases, a null `spec` or
//! `env`, a block list item whose `-` stands alone on its line.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::{Yaml, YamlLoader};

use crate::model::wellknown::API_VERSION;

/// A value an edit replaced: what it meant and how it was spelled, so that
/// a restore writes back the same bytes (`15s`, `"15s"` and `'15s'` are one
/// value, three spellings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    /// The value as the Site's env has it.
    pub value: String,
    /// The scalar exactly as it stood in the file, quotes included.
    pub source: String,
}

/// What [`set_env`] changed, enough for [`restore`] to undo it byte for byte.
/// Serializable: a campaign keeps it in the activation's state in Git.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    /// Each key set: its previous value, `None` when the entry was added.
    pub values: BTreeMap<String, Option<Previous>>,
    /// Whether the edit had to add `env` (or `spec` with it) to the Site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<Added>,
}

/// A key [`set_env`] added to the Site because it was absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Added {
    /// `spec.env` was absent.
    Env,
    /// `spec` itself was absent.
    Spec,
}

/// The edited text and what the edit replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub text: String,
    pub replaced: Replaced,
}

/// Why a Site file could not be edited. Lines count from 1; the caller adds
/// the file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("line {line}: not valid YAML: {message}")]
    Yaml { line: usize, message: String },
    #[error("no Site {site:?} (kind: Site, apiVersion: {API_VERSION}) in this file")]
    SiteNotFound { site: String },
    #[error("line {line}: Site {site:?} is defined a second time (first at line {first})")]
    DuplicateSite {
        site: String,
        line: usize,
        first: usize,
    },
    /// A layout this editor does not handle; the file was left as it was.
    #[error("line {line}: {field}: {message} (not edited: this layout is not supported)")]
    Unsupported {
        line: usize,
        field: String,
        message: String,
    },
    /// The edited text did not parse back to the intended documents.
    #[error("Site {site:?}: the edited file does not check out ({message}); not edited")]
    Unverified { site: String, message: String },
}

/// Sets `values` in the env of Site `site` in `text` (a file of one or more
/// YAML documents). Existing entries get their value replaced in place,
/// missing ones are appended in the list's own style; new values are written
/// as double-quoted strings.
pub fn set_env(
    text: &str,
    site: &str,
    values: &BTreeMap<String, String>,
) -> Result<Edited, EditError> {
    let docs = parse(text)?;
    let (index, doc) = find_site(&docs, site)?;
    let mut splices = Vec::new();
    let mut replaced = Replaced::default();
    let mut expected_env: Vec<(String, Yaml)> = Vec::new();
    let new_items = |keys: &[&String]| -> Vec<String> {
        keys.iter()
            .map(|k| {
                format!(
                    "{{name: {}, value: {}}}",
                    name_scalar(k),
                    quote(&values[*k])
                )
            })
            .collect()
    };
    match doc.get("spec") {
        None => {
            let keys: Vec<&String> = values.keys().collect();
            let value = format!("{{env: [{}]}}", new_items(&keys).join(", "));
            splices.push(add_key(text, doc, "spec", &value)?);
            replaced.added = Some(Added::Spec);
        }
        Some(spec) => match spec.get("env") {
            None => {
                spec.map_entries("spec")?;
                let keys: Vec<&String> = values.keys().collect();
                let value = format!("[{}]", new_items(&keys).join(", "));
                splices.push(add_key(text, spec, "env", &value)?);
                replaced.added = Some(Added::Env);
            }
            Some(env) => {
                let entries = env_entries(env)?;
                let mut missing = Vec::new();
                for (key, value) in values {
                    match entries.get(key.as_str()) {
                        Some((i, _, Some(node))) => {
                            let span = node.span(&format!("spec.env[{i}].value"))?;
                            replaced.values.insert(
                                key.clone(),
                                Some(Previous {
                                    value: node.scalar().unwrap_or_default().to_string(),
                                    source: text[span.clone()].to_string(),
                                }),
                            );
                            splices.push((span, quote(value)));
                        }
                        Some((i, item, None)) => {
                            return Err(unsupported(
                                item,
                                &format!("spec.env[{i}]"),
                                format!("the entry {key:?} has no value field"),
                            ))
                        }
                        None => missing.push(key),
                    }
                }
                if !missing.is_empty() {
                    splices.push(append_items(text, env, &new_items(&missing))?);
                }
            }
        },
    }
    for (key, value) in values {
        replaced.values.entry(key.clone()).or_insert(None);
        expected_env.push((key.clone(), Yaml::String(value.clone())));
    }
    let new = apply(text, splices);
    let mut expected = load(text)?;
    set_expected(&mut expected[index], &expected_env, replaced.added);
    verify(&new, &expected, site)?;
    Ok(Edited {
        text: new,
        replaced,
    })
}

/// Undoes a [`set_env`] of Site `site` in `text`: every replaced value gets
/// its previous spelling back, every added entry (and an added `env` or
/// `spec`) is removed. On the text `set_env` returned, the result is the
/// original byte for byte; on a file changed since, only those values are.
pub fn restore(text: &str, site: &str, replaced: &Replaced) -> Result<String, EditError> {
    if replaced.values.is_empty() {
        return Ok(text.to_string());
    }
    let docs = parse(text)?;
    let (index, doc) = find_site(&docs, site)?;
    let Some(spec) = doc.get("spec") else {
        return Err(unsupported(
            doc,
            "spec",
            "absent: nothing to restore".into(),
        ));
    };
    let Some(env) = spec.get("env") else {
        return Err(unsupported(
            spec,
            "spec.env",
            "absent: nothing to restore".into(),
        ));
    };
    let entries = env_entries(env)?;
    let added: BTreeSet<&str> = replaced
        .values
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    let names: BTreeSet<&str> = entries.keys().copied().collect();
    let mut expected = load(text)?;
    // The whole `env` (or `spec`) goes when it holds nothing but what the edit added.
    let whole = match replaced.added {
        Some(added_key) if added == names && added.len() == replaced.values.len() => {
            let (map, key) = match added_key {
                Added::Env => (spec, "env"),
                Added::Spec => (doc, "spec"),
            };
            let only_env = spec.map_entries("spec")?.len() == 1;
            (added_key == Added::Env || only_env).then_some((map, key))
        }
        _ => None,
    };
    let splices = if let Some((map, key)) = whole {
        remove_expected_key(&mut expected[index], key);
        remove_key(text, map, key)?
    } else {
        let mut splices = Vec::new();
        let mut remove = BTreeSet::new();
        let mut expected_env = Vec::new();
        for (key, previous) in &replaced.values {
            let Some((i, item, value)) = entries.get(key.as_str()) else {
                if previous.is_none() {
                    continue; // already gone
                }
                return Err(unsupported(
                    env,
                    "spec.env",
                    format!("no entry {key:?} to restore"),
                ));
            };
            match previous {
                None => {
                    remove.insert(key.as_str());
                }
                Some(p) => {
                    let Some(value) = value else {
                        return Err(unsupported(
                            item,
                            &format!("spec.env[{i}]"),
                            format!("the entry {key:?} has no value field"),
                        ));
                    };
                    let yaml = previous_scalar(p, site)?;
                    splices.push((
                        value.span(&format!("spec.env[{i}].value"))?,
                        p.source.clone(),
                    ));
                    expected_env.push((key.clone(), yaml));
                }
            }
        }
        set_expected(&mut expected[index], &expected_env, None);
        remove_expected_items(&mut expected[index], &remove);
        let items = env.items("spec.env")?;
        let indices: BTreeSet<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| {
                item.get("name")
                    .and_then(Node::scalar)
                    .is_some_and(|n| remove.contains(n))
            })
            .map(|(i, _)| i)
            .collect();
        splices.extend(remove_items(text, env, &indices)?);
        splices
    };
    let new = apply(text, splices);
    verify(&new, &expected, site)?;
    Ok(new)
}

// ---- the position tree ------------------------------------------------------

/// A YAML node with its byte position in the text.
#[derive(Debug)]
struct Node {
    start: usize,
    line: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// `end` is `None` where the scalar is not on one line or is a block scalar.
    Scalar {
        value: String,
        end: Option<usize>,
    },
    /// `close` is the byte after `]` of a flow list.
    Seq {
        flow: bool,
        items: Vec<Node>,
        close: usize,
    },
    /// `close` is the byte after `}` of a flow mapping.
    Map {
        flow: bool,
        entries: Vec<(Node, Node)>,
        close: usize,
    },
    Alias,
}

impl Node {
    fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The value of key `key` of a mapping.
    fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map { entries, .. } => entries
                .iter()
                .find(|(k, _)| k.scalar() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn map_entries(&self, field: &str) -> Result<&[(Node, Node)], EditError> {
        match &self.kind {
            Kind::Map { entries, .. } => Ok(entries),
            _ => Err(unsupported(self, field, "not a mapping".into())),
        }
    }

    fn items(&self, field: &str) -> Result<&[Node], EditError> {
        match &self.kind {
            Kind::Seq { items, .. } => Ok(items),
            _ => Err(unsupported(self, field, "not a list".into())),
        }
    }

    fn flow(&self) -> bool {
        matches!(
            self.kind,
            Kind::Seq { flow: true, .. } | Kind::Map { flow: true, .. }
        )
    }

    /// The byte just past the node.
    fn end(&self) -> Result<usize, EditError> {
        match &self.kind {
            Kind::Scalar { end: Some(end), .. } => Ok(*end),
            Kind::Scalar { end: None, .. } => Err(unsupported(
                self,
                "value",
                "a block or multi-line scalar".into(),
            )),
            Kind::Seq {
                flow: true, close, ..
            }
            | Kind::Map {
                flow: true, close, ..
            } => Ok(*close),
            Kind::Seq { items, .. } => match items.last() {
                Some(last) => last.end(),
                None => Ok(self.start),
            },
            Kind::Map { entries, .. } => match entries.last() {
                Some((_, v)) => v.end(),
                None => Ok(self.start),
            },
            Kind::Alias => Err(unsupported(self, "value", "an alias".into())),
        }
    }

    /// The bytes of a one-line scalar, quotes included.
    fn span(&self, field: &str) -> Result<Range<usize>, EditError> {
        match &self.kind {
            Kind::Scalar { end: Some(end), .. } => Ok(self.start..*end),
            _ => Err(unsupported(
                self,
                field,
                "not a one-line scalar (block scalars and multi-line values are not edited)".into(),
            )),
        }
    }
}

fn unsupported(node: &Node, field: &str, message: String) -> EditError {
    EditError::Unsupported {
        line: node.line,
        field: field.to_string(),
        message,
    }
}

/// A container being built: its node, and for a mapping the key awaiting its value.
struct Open {
    node: Node,
    key: Option<Node>,
}

struct Builder<'a> {
    text: &'a str,
    /// Byte offset of each line's start (line 1 at index 0).
    lines: Vec<usize>,
    docs: Vec<Node>,
    stack: Vec<Open>,
    /// Open flow collections: plain scalars inside end at `,[]{}`.
    flow: usize,
}

impl Builder<'_> {
    /// The byte offset of a marker: yaml-rust2 counts lines from 1 and
    /// columns from 0, in characters.
    fn offset(&self, mark: Marker) -> usize {
        let start = self
            .lines
            .get(mark.line().saturating_sub(1))
            .copied()
            .unwrap_or(self.text.len());
        self.text[start..]
            .char_indices()
            .nth(mark.col())
            .map_or(self.text.len(), |(i, _)| start + i)
    }

    fn push(&mut self, node: Node) {
        let Some(open) = self.stack.last_mut() else {
            self.docs.push(node);
            return;
        };
        match &mut open.node.kind {
            Kind::Seq { items, .. } => items.push(node),
            Kind::Map { flow, entries, .. } => match open.key.take() {
                Some(key) => entries.push((key, node)),
                None => {
                    // A block mapping's start event sits after its first key.
                    if !*flow && entries.is_empty() {
                        open.node.start = node.start;
                        open.node.line = node.line;
                    }
                    open.key = Some(node);
                }
            },
            _ => {}
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let start = self.offset(mark);
        let line = mark.line();
        match ev {
            Event::Scalar(value, style, ..) => {
                let end = scalar_end(self.text, start, style, &value, self.flow > 0);
                self.push(Node {
                    start,
                    line,
                    kind: Kind::Scalar { value, end },
                });
            }
            Event::Alias(_) => self.push(Node {
                start,
                line,
                kind: Kind::Alias,
            }),
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                let seq = matches!(ev, Event::SequenceStart(..));
                let flow = self.text[start..].starts_with(if seq { '[' } else { '{' });
                self.flow += usize::from(flow);
                let kind = if seq {
                    Kind::Seq {
                        flow,
                        items: Vec::new(),
                        close: start,
                    }
                } else {
                    Kind::Map {
                        flow,
                        entries: Vec::new(),
                        close: start,
                    }
                };
                self.stack.push(Open {
                    node: Node { start, line, kind },
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(mut open) = self.stack.pop() {
                    if let Kind::Seq {
                        flow: true, close, ..
                    }
                    | Kind::Map {
                        flow: true, close, ..
                    } = &mut open.node.kind
                    {
                        *close = start + 1;
                        self.flow -= 1;
                    }
                    self.push(open.node);
                }
            }
            _ => {}
        }
    }
}

/// The byte after a scalar that starts at `start` and stays on its line;
/// `None` for block scalars and scalars spanning lines.
fn scalar_end(
    text: &str,
    start: usize,
    style: TScalarStyle,
    value: &str,
    in_flow: bool,
) -> Option<usize> {
    let rest = &text[start..];
    let mut chars = rest.char_indices().peekable();
    match style {
        TScalarStyle::DoubleQuoted | TScalarStyle::SingleQuoted => {
            let quote = if style == TScalarStyle::DoubleQuoted {
                '"'
            } else {
                '\''
            };
            chars.next();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\n' | '\r' => return None,
                    '\\' if quote == '"' => {
                        if matches!(chars.next(), None | Some((_, '\n' | '\r'))) {
                            return None;
                        }
                    }
                    '\'' if quote == '\'' && matches!(chars.peek(), Some((_, '\''))) => {
                        chars.next();
                    }
                    c if c == quote => return Some(start + i + 1),
                    _ => {}
                }
            }
            None
        }
        TScalarStyle::Plain => {
            let indicator = |c: char| in_flow && ",[]{}".contains(c);
            let mut end = 0;
            let mut prev_blank = false;
            while let Some((i, c)) = chars.next() {
                let next = chars.peek().map(|(_, n)| *n);
                let ends_here = matches!(c, '\n' | '\r')
                    || indicator(c)
                    || (c == '#' && prev_blank)
                    || (c == ':' && next.is_none_or(|n| n.is_whitespace() || indicator(n)));
                if ends_here {
                    break;
                }
                prev_blank = c == ' ' || c == '\t';
                end = i + c.len_utf8();
            }
            let raw = rest[..end].trim_end_matches([' ', '\t']);
            (raw == value).then_some(start + raw.len())
        }
        _ => None,
    }
}

fn parse(text: &str) -> Result<Vec<Node>, EditError> {
    let mut lines = vec![0];
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let brk = *b == b'\n' || (*b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
        if brk {
            lines.push(i + 1);
        }
    }
    let mut builder = Builder {
        text,
        lines,
        docs: Vec::new(),
        stack: Vec::new(),
        flow: 0,
    };
    Parser::new_from_str(text)
        .load(&mut builder, true)
        .map_err(|e| EditError::Yaml {
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
    Ok(builder.docs)
}

/// The document of Site `site`: a mapping with `apiVersion: fermata.dev/v1alpha1`,
/// `kind: Site` and `metadata.name: <site>`.
fn find_site<'a>(docs: &'a [Node], site: &str) -> Result<(usize, &'a Node), EditError> {
    let mut found: Option<(usize, &Node)> = None;
    for (i, doc) in docs.iter().enumerate() {
        let is_site = doc.get("apiVersion").and_then(Node::scalar) == Some(API_VERSION)
            && doc.get("kind").and_then(Node::scalar) == Some("Site")
            && doc
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Node::scalar)
                == Some(site);
        if !is_site {
            continue;
        }
        if let Some((_, first)) = found {
            return Err(EditError::DuplicateSite {
                site: site.to_string(),
                line: doc.line,
                first: first.line,
            });
        }
        found = Some((i, doc));
    }
    found.ok_or_else(|| EditError::SiteNotFound {
        site: site.to_string(),
    })
}

/// An env entry: its index, the item, and its `value` node if any.
type Entry<'a> = (usize, &'a Node, Option<&'a Node>);

/// The env list's entries by name.
fn env_entries(env: &Node) -> Result<BTreeMap<&str, Entry<'_>>, EditError> {
    let mut out = BTreeMap::new();
    for (i, item) in env.items("spec.env")?.iter().enumerate() {
        let field = format!("spec.env[{i}]");
        item.map_entries(&field)?;
        let Some(name) = item.get("name").and_then(Node::scalar) else {
            return Err(unsupported(item, &field, "no name".into()));
        };
        if out.insert(name, (i, item, item.get("value"))).is_some() {
            return Err(unsupported(
                item,
                &field,
                format!("{name:?} is listed twice"),
            ));
        }
    }
    Ok(out)
}

// ---- splices ----------------------------------------------------------------

type Splice = (Range<usize>, String);

fn apply(text: &str, mut splices: Vec<Splice>) -> String {
    splices.sort_by_key(|(r, _)| (r.start, r.end));
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for (range, with) in splices {
        out.push_str(&text[at..range.start]);
        out.push_str(&with);
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

fn line_start(text: &str, pos: usize) -> usize {
    text[..pos].rfind(['\n', '\r']).map_or(0, |i| i + 1)
}

fn line_end(text: &str, pos: usize) -> usize {
    text[pos..]
        .find(['\n', '\r'])
        .map_or(text.len(), |i| pos + i)
}

/// The line break at `pos` (`""` at the end of the text).
fn break_at(text: &str, pos: usize) -> &str {
    let rest = &text[pos..];
    if rest.starts_with("\r\n") {
        "\r\n"
    } else if rest.starts_with(['\n', '\r']) {
        &rest[..1]
    } else {
        ""
    }
}

/// The line break to write after the line ending at `pos`: that line's own,
/// else the file's first, else `\n`.
fn newline(text: &str, pos: usize) -> &str {
    match break_at(text, pos) {
        "" => text.find(['\n', '\r']).map_or("\n", |i| break_at(text, i)),
        b => b,
    }
}

/// The indentation of a block node starting at `start`, which must be the
/// first thing on its line, or come right after the line's `- `.
fn indentation<'t>(
    text: &'t str,
    node: &Node,
    dash: bool,
    field: &str,
) -> Result<&'t str, EditError> {
    let prefix = &text[line_start(text, node.start)..node.start];
    let indent = prefix.trim_start_matches([' ', '\t']);
    let ok = if dash {
        indent.starts_with('-')
            && indent[1..].trim_start_matches([' ', '\t']).is_empty()
            && indent.len() > 1
    } else {
        indent.is_empty()
    };
    if !ok {
        return Err(unsupported(
            node,
            field,
            if dash {
                "a list item not written as `- ` on its own line".into()
            } else {
                "a key that does not start its line".into()
            },
        ));
    }
    Ok(&prefix[..prefix.len() - indent.len()])
}

/// Adds `key: value` (one line of flow YAML) as the last entry of `map`.
fn add_key(text: &str, map: &Node, key: &str, value: &str) -> Result<Splice, EditError> {
    let entries = map.map_entries(key)?;
    if map.flow() {
        return Ok(match entries.last() {
            None => (map.start + 1..map.start + 1, format!("{key}: {value}")),
            Some((_, v)) => {
                let at = v.end()?;
                (at..at, format!(", {key}: {value}"))
            }
        });
    }
    let Some((first, last)) = entries.first().zip(entries.last()) else {
        return Err(unsupported(map, key, "an empty block mapping".into()));
    };
    let indent = indentation(text, &first.0, false, key)?;
    let at = line_end(text, last.1.end()?);
    Ok((
        at..at,
        format!("{}{indent}{key}: {value}", newline(text, at)),
    ))
}

/// Appends `items` (flow mappings, one line each) to the list `env`.
fn append_items(text: &str, env: &Node, items: &[String]) -> Result<Splice, EditError> {
    let list = env.items("spec.env")?;
    if env.flow() {
        return Ok(match list.last() {
            None => (env.start + 1..env.start + 1, items.join(", ")),
            Some(last) => {
                let at = last.end()?;
                (at..at, format!(", {}", items.join(", ")))
            }
        });
    }
    let Some((first, last)) = list.first().zip(list.last()) else {
        return Err(unsupported(env, "spec.env", "an empty block list".into()));
    };
    let indent = indentation(text, first, true, "spec.env")?;
    let at = line_end(text, last.end()?);
    let nl = newline(text, at);
    let added: String = items.iter().map(|i| format!("{nl}{indent}- {i}")).collect();
    Ok((at..at, added))
}

/// Removes the entries `spans` (start, end) at `indices` of a flow collection:
/// each run of removed entries goes with the separator before it, or after it
/// when it leads the collection.
fn remove_flow(spans: &[(usize, usize)], indices: &BTreeSet<usize>) -> Vec<Splice> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < spans.len() {
        if !indices.contains(&i) {
            i += 1;
            continue;
        }
        let first = i;
        while i < spans.len() && indices.contains(&i) {
            i += 1;
        }
        let last = i - 1;
        let range = if first > 0 {
            spans[first - 1].1..spans[last].1
        } else if i < spans.len() {
            spans[first].0..spans[i].0
        } else {
            spans[first].0..spans[last].1
        };
        out.push((range, String::new()));
    }
    out
}

/// Removes whole lines `[start line of each span, end of its last line]`,
/// with one line break: the one after, or the one before at the end of text.
fn remove_lines(text: &str, spans: Vec<(usize, usize)>) -> Vec<Splice> {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for (start, end) in spans {
        let end = line_end(text, end);
        let r = line_start(text, start)..end + break_at(text, end).len();
        match ranges.last_mut() {
            Some(prev) if prev.end >= r.start => prev.end = prev.end.max(r.end),
            _ => ranges.push(r),
        }
    }
    ranges
        .into_iter()
        .map(|mut r| {
            // The last line of a text without a final line break: take the one before.
            if !text[..r.end].ends_with(['\n', '\r']) {
                let before = &text[..r.start];
                r.start -= if before.ends_with("\r\n") {
                    2
                } else {
                    usize::from(before.ends_with(['\n', '\r']))
                };
            }
            (r, String::new())
        })
        .collect()
}

fn remove_items(
    text: &str,
    env: &Node,
    indices: &BTreeSet<usize>,
) -> Result<Vec<Splice>, EditError> {
    let list = env.items("spec.env")?;
    let mut spans = Vec::new();
    for (i, item) in list.iter().enumerate() {
        if env.flow() || indices.contains(&i) {
            if !env.flow() {
                indentation(text, item, true, "spec.env")?;
            }
            spans.push((item.start, item.end()?));
        } else {
            spans.push((item.start, item.start));
        }
    }
    if env.flow() {
        return Ok(remove_flow(&spans, indices));
    }
    let spans = spans
        .into_iter()
        .enumerate()
        .filter(|(i, _)| indices.contains(i))
        .map(|(_, s)| s)
        .collect();
    Ok(remove_lines(text, spans))
}

fn remove_key(text: &str, map: &Node, key: &str) -> Result<Vec<Splice>, EditError> {
    let entries = map.map_entries(key)?;
    let Some(at) = entries.iter().position(|(k, _)| k.scalar() == Some(key)) else {
        return Ok(Vec::new());
    };
    if map.flow() {
        let spans = entries
            .iter()
            .map(|(k, v)| Ok((k.start, v.end()?)))
            .collect::<Result<Vec<_>, EditError>>()?;
        return Ok(remove_flow(&spans, &BTreeSet::from([at])));
    }
    let (k, v) = &entries[at];
    indentation(text, k, false, key)?;
    Ok(remove_lines(text, vec![(k.start, v.end()?)]))
}

// ---- writing scalars --------------------------------------------------------

/// `value` as a YAML double-quoted string.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An env name as written in a new entry: plain when it reads back as that
/// string (`LINE_COUNT`), double-quoted otherwise.
fn name_scalar(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with(['-', '.'])
        && matches!(YamlLoader::load_from_str(name).as_deref(), Ok([Yaml::String(s)]) if s == name);
    if plain {
        name.to_string()
    } else {
        quote(name)
    }
}

/// The value a [`Previous`] writes back; its source must be exactly one
/// one-line scalar meaning `value` (it comes from state in Git: checked).
fn previous_scalar(p: &Previous, site: &str) -> Result<Yaml, EditError> {
    let bad = |message: String| EditError::Unverified {
        site: site.to_string(),
        message,
    };
    let docs = parse(&p.source).map_err(|e| bad(format!("previous value {:?}: {e}", p.source)))?;
    match docs.as_slice() {
        [node @ Node {
            kind:
                Kind::Scalar {
                    value,
                    end: Some(end),
                },
            ..
        }] if node.start == 0 && *end == p.source.len() && *value == p.value => {}
        _ => {
            return Err(bad(format!(
                "previous value {:?} is not one scalar reading {:?}",
                p.source, p.value
            )))
        }
    }
    Ok(load(&p.source)?.pop().unwrap_or(Yaml::Null))
}

// ---- verification -----------------------------------------------------------

fn load(text: &str) -> Result<Vec<Yaml>, EditError> {
    YamlLoader::load_from_str(text).map_err(|e| EditError::Yaml {
        line: e.marker().line(),
        message: e.info().to_string(),
    })
}

fn key(k: &str) -> Yaml {
    Yaml::String(k.to_string())
}

/// The Site document as the edit means it: `env` entries set (appended when
/// absent), `env` and `spec` created where the edit adds them.
fn set_expected(doc: &mut Yaml, values: &[(String, Yaml)], added: Option<Added>) {
    let Yaml::Hash(root) = doc else { return };
    if added == Some(Added::Spec) {
        root.insert(key("spec"), Yaml::Hash(Default::default()));
    }
    let Some(Yaml::Hash(spec)) = root.get_mut(&key("spec")) else {
        return;
    };
    if added.is_some() {
        spec.insert(key("env"), Yaml::Array(Vec::new()));
    }
    let Some(Yaml::Array(env)) = spec.get_mut(&key("env")) else {
        return;
    };
    for (name, value) in values {
        let found = env.iter_mut().find_map(|item| match item {
            Yaml::Hash(h) if h.get(&key("name")) == Some(&key(name)) => Some(h),
            _ => None,
        });
        match found {
            Some(h) => {
                if let Some(v) = h.get_mut(&key("value")) {
                    *v = value.clone();
                }
            }
            None => {
                let mut h = yaml_rust2::yaml::Hash::new();
                h.insert(key("name"), key(name));
                h.insert(key("value"), value.clone());
                env.push(Yaml::Hash(h));
            }
        }
    }
}

fn remove_expected_items(doc: &mut Yaml, names: &BTreeSet<&str>) {
    if let Yaml::Hash(root) = doc {
        if let Some(Yaml::Hash(spec)) = root.get_mut(&key("spec")) {
            if let Some(Yaml::Array(env)) = spec.get_mut(&key("env")) {
                env.retain(|item| {
                    !matches!(item, Yaml::Hash(h)
                        if matches!(h.get(&key("name")), Some(Yaml::String(n)) if names.contains(n.as_str())))
                });
            }
        }
    }
}

fn remove_expected_key(doc: &mut Yaml, which: &str) {
    if let Yaml::Hash(root) = doc {
        if which == "spec" {
            root.remove(&key("spec"));
        } else if let Some(Yaml::Hash(spec)) = root.get_mut(&key("spec")) {
            spec.remove(&key("env"));
        }
    }
}

/// The edited text must parse to exactly the expected documents.
fn verify(new: &str, expected: &[Yaml], site: &str) -> Result<(), EditError> {
    let fail = |message: String| EditError::Unverified {
        site: site.to_string(),
        message,
    };
    let docs = load(new).map_err(|e| fail(e.to_string()))?;
    if docs.len() != expected.len() {
        return Err(fail(format!(
            "{} documents instead of {}",
            docs.len(),
            expected.len()
        )));
    }
    match docs.iter().zip(expected).position(|(a, b)| a != b) {
        Some(i) => Err(fail(format!(
            "document {} differs from the intended one",
            i + 1
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: fermata.dev/v1alpha1\nkind: Site\n";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Each case: a file, the values set on Site `a`, the file expected after.
    /// Every case also restores and must give the original back.
    #[test]
    fn set_env_edits_only_the_values_in_every_supported_layout() {
        type Case = (
            &'static str,
            String,
            &'static [(&'static str, &'static str)],
            String,
        );
        let cases: &[Case] = &[
            (
                "flow list, plain value replaced",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: INTERVAL, value: 15s}}]\n"),
                &[("INTERVAL", "30s")],
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: INTERVAL, value: \"30s\"}}]\n"),
            ),
            (
                "flow list, entry appended after the last one",
                format!("{HEAD}metadata: {{name: a}}\nspec: {{env: [{{name: A, value: \"1\"}}]}}\n"),
                &[("B", "2")],
                format!("{HEAD}metadata: {{name: a}}\nspec: {{env: [{{name: A, value: \"1\"}}, {{name: B, value: \"2\"}}]}}\n"),
            ),
            (
                "empty flow list",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: []\n"),
                &[("B", "2")],
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: B, value: \"2\"}}]\n"),
            ),
            (
                "flow list over lines with a trailing comma",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [\n    {{name: A, value: x}},\n  ]\n"),
                &[("A", "y"), ("B", "z")],
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [\n    {{name: A, value: \"y\"}}, {{name: B, value: \"z\"}},\n  ]\n"),
            ),
            (
                "block list, comments and quoting kept",
                format!("# fleet\n{HEAD}metadata:\n  name: a # the canary\nspec:\n  env:\n    - name: A   # a comment\n      value: 'x'  # keep me\n    - {{name: B, value: \"y\"}}\n  other: 1\n"),
                &[("A", "new"), ("C", "c")],
                format!("# fleet\n{HEAD}metadata:\n  name: a # the canary\nspec:\n  env:\n    - name: A   # a comment\n      value: \"new\"  # keep me\n    - {{name: B, value: \"y\"}}\n    - {{name: C, value: \"c\"}}\n  other: 1\n"),
            ),
            (
                "indentless block list at the end of a file without a final newline",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env:\n  - name: A\n    value: x"),
                &[("B", "b")],
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env:\n  - name: A\n    value: x\n  - {{name: B, value: \"b\"}}"),
            ),
            (
                "CRLF line endings",
                format!("{HEAD}metadata: {{name: a}}\r\nspec:\r\n  env:\r\n    - {{name: A, value: x}}\r\n").replace("Site\n", "Site\r\n").replace("alpha1\n", "alpha1\r\n"),
                &[("B", "b")],
                format!("{HEAD}metadata: {{name: a}}\r\nspec:\r\n  env:\r\n    - {{name: A, value: x}}\r\n    - {{name: B, value: \"b\"}}\r\n").replace("Site\n", "Site\r\n").replace("alpha1\n", "alpha1\r\n"),
            ),
            (
                "several documents: only the site's changes",
                format!("{HEAD}metadata: {{name: b}}\nspec:\n  env: [{{name: A, value: x}}]\n---\n{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: x}}]\n---\nkind: Other\nspec: {{env: [{{name: A, value: x}}]}}\n"),
                &[("A", "y")],
                format!("{HEAD}metadata: {{name: b}}\nspec:\n  env: [{{name: A, value: x}}]\n---\n{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: \"y\"}}]\n---\nkind: Other\nspec: {{env: [{{name: A, value: x}}]}}\n"),
            ),
            (
                "missing env in a block spec",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  note: n # c\n# after\n"),
                &[("A", "1"), ("B", "2")],
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  note: n # c\n  env: [{{name: A, value: \"1\"}}, {{name: B, value: \"2\"}}]\n# after\n"),
            ),
            (
                "missing env in an empty flow spec",
                format!("{HEAD}metadata: {{name: a}}\nspec: {{}}\n"),
                &[("A", "1")],
                format!("{HEAD}metadata: {{name: a}}\nspec: {{env: [{{name: A, value: \"1\"}}]}}\n"),
            ),
            (
                "missing env in a flow spec",
                format!("{HEAD}metadata: {{name: a}}\nspec: {{note: x}}\n"),
                &[("A", "1")],
                format!("{HEAD}metadata: {{name: a}}\nspec: {{note: x, env: [{{name: A, value: \"1\"}}]}}\n"),
            ),
            (
                "missing spec",
                format!("{HEAD}metadata: {{name: a, labels: {{ring: canary}}}}\n---\n{HEAD}metadata: {{name: b}}\n"),
                &[("A", "1")],
                format!("{HEAD}metadata: {{name: a, labels: {{ring: canary}}}}\nspec: {{env: [{{name: A, value: \"1\"}}]}}\n---\n{HEAD}metadata: {{name: b}}\n"),
            ),
            (
                "values escaped as double-quoted strings",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: x}}]\n"),
                &[("A", "say \"hi\"\\n\tü\u{1}")],
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: \"say \\\"hi\\\"\\\\n\\tü\\u0001\"}}]\n"),
            ),
            (
                "a name that is not a plain string is quoted",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: x}}]\n"),
                &[("true", "1"), ("a b", "2")],
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: x}}, {{name: \"a b\", value: \"2\"}}, {{name: \"true\", value: \"1\"}}]\n"),
            ),
        ];
        for (name, before, values, after) in cases {
            let edited =
                set_env(before, "a", &map(values)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&edited.text, after, "{name}");
            let restored = restore(&edited.text, "a", &edited.replaced)
                .unwrap_or_else(|e| panic!("{name}: restore: {e}"));
            assert_eq!(&restored, before, "{name}: restore");
        }
    }

    #[test]
    fn replaced_records_previous_values_and_spellings() {
        let text = format!(
            "{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: '1'}}, {{name: B, value: 2}}]\n"
        );
        let edited = set_env(&text, "a", &map(&[("A", "x"), ("B", "y"), ("C", "z")])).unwrap();
        let prev = |value: &str, source: &str| {
            Some(Previous {
                value: value.into(),
                source: source.into(),
            })
        };
        assert_eq!(
            edited.replaced,
            Replaced {
                values: BTreeMap::from([
                    ("A".into(), prev("1", "'1'")),
                    ("B".into(), prev("2", "2")),
                    ("C".into(), None),
                ]),
                added: None,
            }
        );
    }

    /// Layouts the editor refuses, each with the line it names.
    #[test]
    fn unsupported_layouts_and_bad_input_are_errors_not_edits() {
        let cases: &[(&str, String, &str)] = &[
            (
                "no such site",
                format!("{HEAD}metadata: {{name: b}}\nspec: {{}}\n"),
                "no Site \"a\"",
            ),
            (
                "a kind: Site of another apiVersion",
                "apiVersion: v1\nkind: Site\nmetadata: {name: a}\n".into(),
                "no Site \"a\"",
            ),
            (
                "the site twice",
                format!("{HEAD}metadata: {{name: a}}\n---\n{HEAD}metadata: {{name: a}}\n"),
                "line 5: Site \"a\" is defined a second time (first at line 1)",
            ),
            (
                "block scalar value",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env:\n    - name: A\n      value: |\n        x\n"),
                "line 8: spec.env[0].value: not a one-line scalar",
            ),
            (
                "multi-line plain value",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env:\n    - name: A\n      value: x\n        y\n"),
                "line 7: spec.env[0].value: not a one-line scalar",
            ),
            (
                "entry without a value",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A}}]\n"),
                "line 5: spec.env[0]: the entry \"A\" has no value field",
            ),
            (
                "env is not a list",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: {{A: x}}\n"),
                "spec.env: not a list",
            ),
            (
                "null spec",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n"),
                "spec: not a mapping",
            ),
            (
                "dash alone on its line",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env:\n    -\n      name: B\n      value: x\n"),
                "line 7: spec.env: a list item not written as `- ` on its own line",
            ),
            (
                "a name listed twice",
                format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: B, value: x}}, {{name: B, value: y}}]\n"),
                "\"B\" is listed twice",
            ),
            (
                "not YAML",
                format!("{HEAD}metadata: {{name: a\n"),
                "not valid YAML",
            ),
        ];
        let mut failed = Vec::new();
        for (name, text, want) in cases {
            match set_env(text, "a", &map(&[("A", "1")])) {
                Ok(e) => failed.push(format!("{name}: edited to {:?}", e.text)),
                Err(e) if !e.to_string().contains(want) => {
                    failed.push(format!("{name}: {e} lacks {want:?}"))
                }
                Err(_) => {}
            }
        }
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn restore_after_other_changes_touches_only_its_keys() {
        let text = format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: x}}]\n");
        let edited = set_env(&text, "a", &map(&[("A", "1"), ("B", "2")])).unwrap();
        let changed = edited.text.replace("]\n", ", {name: C, value: c}]\n");
        let restored = restore(&changed, "a", &edited.replaced).unwrap();
        assert_eq!(
            restored,
            format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: x}}, {{name: C, value: c}}]\n")
        );
    }

    #[test]
    fn a_tampered_previous_value_is_refused() {
        let text = format!("{HEAD}metadata: {{name: a}}\nspec:\n  env: [{{name: A, value: x}}]\n");
        let mut edited = set_env(&text, "a", &map(&[("A", "1")])).unwrap();
        edited.replaced.values.insert(
            "A".into(),
            Some(Previous {
                value: "x".into(),
                source: "x, B: y".into(),
            }),
        );
        let err = restore(&edited.text, "a", &edited.replaced).unwrap_err();
        assert!(err.to_string().contains("is not one scalar"), "{err}");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9]{1,6}",
                "[a-z]{1,4}".prop_map(|s| format!("'{s}'")),
                "[ -~]{0,6}".prop_map(|s| quote(&s)),
            ]
        }

        /// A Site file in one of the layouts, with the given env spellings.
        fn file(env: &[(String, String)], layout: u8, crlf: bool, tail: bool) -> String {
            let items: Vec<String> = env
                .iter()
                .map(|(k, v)| format!("{{name: {k}, value: {v}}}"))
                .collect();
            let spec = match layout {
                0 => format!("spec:\n  env: [{}]\n", items.join(", ")),
                1 if !items.is_empty() => format!(
                    "spec:\n  # values\n  env:\n{}  other: 1 # c\n",
                    env.iter()
                        .map(|(k, v)| format!("    - name: {k}  # {k}\n      value: {v}\n"))
                        .collect::<String>()
                ),
                2 if !items.is_empty() => format!(
                    "spec:\n  env:\n{}",
                    items
                        .iter()
                        .map(|i| format!("  - {i}\n"))
                        .collect::<String>()
                ),
                3 => format!("spec: {{env: [{}]}}\n", items.join(", ")),
                4 => "spec:\n  other: [1]\n".into(),
                _ => String::new(),
            };
            let mut text = format!(
                "# sites\n{HEAD}metadata: {{name: b}}\nspec: {{env: [{{name: K0, value: x}}]}}\n---\n{HEAD}metadata: {{name: a}}\n{spec}"
            );
            if tail {
                text.push_str("---\nkind: Other # end\n");
            }
            if crlf {
                text = text.replace('\n', "\r\n");
            }
            text
        }

        proptest! {
            #[test]
            fn set_env_then_restore_gives_the_original_bytes(
                env in proptest::collection::btree_map("K[0-4]", scalar(), 0..4),
                values in proptest::collection::btree_map("K[0-6]", "[ -~\u{e9}\n]{0,8}", 1..4),
                layout in 0u8..6,
                crlf: bool,
                tail: bool,
            ) {
                let env: Vec<(String, String)> = env.into_iter().collect();
                let text = file(&env, layout, crlf, tail);
                let edited = set_env(&text, "a", &values).unwrap();
                let docs = YamlLoader::load_from_str(&edited.text).unwrap();
                let site = &docs[1]["spec"]["env"];
                for (k, v) in &values {
                    let entry = site.as_vec().unwrap().iter()
                        .find(|e| e["name"].as_str() == Some(k.as_str())).unwrap();
                    prop_assert_eq!(entry["value"].as_str(), Some(v.as_str()));
                }
                prop_assert_eq!(&docs[0], &YamlLoader::load_from_str(&text).unwrap()[0]);
                let restored = restore(&edited.text, "a", &edited.replaced).unwrap();
                prop_assert_eq!(restored, text);
            }
        }
    }
}
