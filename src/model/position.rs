//! Field path -> line index for YAML documents.
//!
//! serde_yaml only locates syntax and type errors; semantic errors (a dangling
//! reference, a cycle) are found later on typed values. This index, built from
//! yaml-rust2's positioned parser events, lets those errors still name a line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Lines of every node of one document, keyed by field path
/// (`spec.variations[2].synthesizer.name`; the root is `""`).
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// The line of `path`, or of its nearest ancestor that exists (a missing
    /// field is reported where its parent is).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }

    /// The line of the document's root node.
    pub fn root(&self) -> usize {
        self.lines.get("").copied().unwrap_or(1)
    }
}

fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// The first character YAML forbids in a stream (a C0 or C1 control other
/// than tab, line feed, carriage return and next line), as line, column
/// (both from 1, the column in characters) and the character. The parser
/// reports these at line 1 with a byte offset of its read buffer, so they
/// are found here first.
pub fn control_char(text: &str) -> Option<(usize, usize, char)> {
    let allowed = |c: char| matches!(c, '\t' | '\n' | '\r' | '\u{85}') || !c.is_control();
    for (i, line) in text.split('\n').enumerate() {
        if let Some((col, c)) = line.chars().enumerate().find(|(_, c)| !allowed(*c)) {
            return Some((i + 1, col + 1, c));
        }
    }
    None
}

/// Joins a child key onto a path.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a sequence index onto a path.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

enum Frame {
    /// A mapping; `key` is set between a key and its value.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// Inside a complex (non-scalar) mapping key, which has no field path.
    Skip,
}

#[derive(Default)]
struct Builder {
    docs: Vec<LineIndex>,
    stack: Vec<Frame>,
}

impl Builder {
    fn record(&mut self, path: String, line: usize) {
        if let Some(doc) = self.docs.last_mut() {
            doc.lines.entry(path).or_insert(line);
        }
    }

    /// A node starts: find its path, record its line, and open a frame for containers.
    fn node(&mut self, scalar: Option<&str>, container: Option<bool>, line: usize) {
        let child = match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Skip) => None,
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    // This node is a key: its line stands for the entry.
                    match scalar {
                        Some(k) => {
                            let p = join(path, k);
                            *key = Some(k.to_string());
                            self.record(p, line);
                        }
                        None => {
                            *key = Some("?".to_string());
                            if container.is_some() {
                                self.stack.push(Frame::Skip);
                            }
                        }
                    }
                    return;
                }
            },
            Some(Frame::Seq { path, next }) => {
                let p = index(path, *next);
                *next += 1;
                Some(p)
            }
        };
        match (child, container) {
            (Some(p), Some(is_map)) => {
                self.record(p.clone(), line);
                self.stack.push(if is_map {
                    Frame::Map { path: p, key: None }
                } else {
                    Frame::Seq { path: p, next: 0 }
                });
            }
            (Some(p), None) => self.record(p, line),
            (None, Some(_)) => self.stack.push(Frame::Skip),
            (None, None) => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::DocumentStart => {
                self.docs.push(LineIndex::default());
                self.stack.clear();
            }
            Event::Scalar(v, ..) => self.node(Some(&v), None, line),
            Event::Alias(_) => self.node(None, None, line),
            Event::MappingStart(..) => self.node(None, Some(true), line),
            Event::SequenceStart(..) => self.node(None, Some(false), line),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Indexes every document of a YAML stream, in order. Fails only on a syntax
/// error, which serde_yaml reports with a better message anyway.
pub fn index_documents(text: &str) -> Result<Vec<LineIndex>, String> {
    let mut b = Builder::default();
    Parser::new_from_str(text)
        .load(&mut b, true)
        .map_err(|e| e.to_string())?;
    Ok(b.docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_paths_across_documents() {
        let text = "\
a: 1
spec:
  variations:
    - name: x
      synthesizer: {name: vision}
    - name: y
      env:
        - {name: A, value: b}
---
kind: Second
list: [1, 2]
";
        let docs = index_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        let d = &docs[0];
        assert_eq!(d.line("a"), Some(1));
        assert_eq!(d.line("spec.variations"), Some(3));
        assert_eq!(d.line("spec.variations[0]"), Some(4));
        assert_eq!(d.line("spec.variations[0].synthesizer.name"), Some(5));
        assert_eq!(d.line("spec.variations[1].name"), Some(6));
        assert_eq!(d.line("spec.variations[1].env[0].value"), Some(8));
        // Missing fields fall back to their nearest ancestor.
        assert_eq!(d.line("spec.variations[1].target"), Some(6));
        assert_eq!(docs[1].line("kind"), Some(10));
        assert_eq!(docs[1].line("list[1]"), Some(11));
    }

    #[test]
    fn complex_keys_do_not_shift_paths() {
        let text = "? [a, b]\n: 1\nafter: 2\n";
        let docs = index_documents(text).unwrap();
        assert_eq!(docs[0].line("after"), Some(3));
    }

    #[test]
    fn control_characters_are_found_at_their_line_and_column() {
        // Allowed: tab, CR (CRLF files), NEL; the rest of C0 and C1 and DEL are not.
        assert_eq!(control_char("a:\tb\r\nc: \u{85}d\n"), None);
        assert_eq!(control_char("a: 1\nb: x\0\n"), Some((2, 5, '\0')));
        assert_eq!(control_char("a: \u{7f}\n"), Some((1, 4, '\u{7f}')));
        assert_eq!(
            control_char("é: \u{9b}\n"),
            Some((1, 4, '\u{9b}')),
            "columns count characters"
        );
        assert_eq!(
            control_char("a: 1\r\nb: \u{1b}[31m\r\n"),
            Some((2, 4, '\u{1b}'))
        );
    }
}
