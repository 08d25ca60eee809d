//! The fleet as a picture: a heatmap, sites as rows and compositions as
//! columns, each cell coloured by the composition's state at the site,
//! with a legend and a `<title>` tooltip per cell. Plain SVG 1.1 with
//! presentation attributes only (no CSS, no script), so a browser shows it
//! and GitHub renders it in `summary.md` as an image.
//!
//! Every (site, composition) pair of the view has exactly one cell, a
//! `<rect class="cell" data-site=".." data-composition=".." data-state="..">`
//! (`data-state="absent"` where the site does not report the composition):
//! tools and tests find cells by those attributes. All text is escaped.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::view::{short, CompositionView, FleetView};
use crate::status::timeline::{colour, PALETTE as STATES};
use crate::status::State;

const CELL: usize = 22;
const GAP: usize = 2;
/// Per character of a label, in the 12px sans-serif used.
const CHAR_W: usize = 7;

/// The heatmap of `view`.
pub fn render(view: &FleetView) -> String {
    let label_w = view
        .sites
        .iter()
        .map(|s| s.site.chars().count() + 2)
        .max()
        .unwrap_or(4)
        .max(6)
        * CHAR_W;
    // Column labels are drawn at -45°: their height is about their length / √2.
    let head_h = 40
        + view
            .compositions
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(4)
            * CHAR_W
            * 3
            / 4;
    let cols = view.compositions.len();
    let rows = view.sites.len();
    let grid_w = cols * (CELL + GAP);
    let legend_y = head_h + rows * (CELL + GAP) + 16;
    // Rotated labels lean right by about their height.
    let width = (label_w + grid_w + head_h).max(STATES.len() * 96 + 20);
    let height = legend_y + 40;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="-apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let title = view.headline();
    let _ = writeln!(out, "<title>{}</title>", esc(&title));
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r##"<text x="8" y="18" font-size="14" font-weight="bold" fill="#1f2328">{}</text>"##,
        esc(&title)
    );
    for (j, comp) in view.compositions.iter().enumerate() {
        let x = label_w + j * (CELL + GAP) + CELL / 2;
        let _ = writeln!(
            out,
            r##"<text class="composition" transform="translate({x},{}) rotate(-45)" fill="#1f2328">{}</text>"##,
            head_h - 6,
            esc(comp)
        );
    }
    for (i, site) in view.sites.iter().enumerate() {
        let y = head_h + i * (CELL + GAP);
        let (fill, mark) = if site.at_head {
            ("#1f2328", "")
        } else {
            ("#cf222e", " *")
        };
        let why = site
            .lagging
            .iter()
            .map(|l| format!("{}: {}", l.reason.as_str(), l.message))
            .collect::<Vec<_>>()
            .join("\n");
        let _ = writeln!(
            out,
            r#"<text class="site" x="8" y="{}" fill="{fill}">{}{mark}<title>{}</title></text>"#,
            y + CELL / 2 + 4,
            esc(&site.site),
            esc(&if why.is_empty() {
                format!("{}: at the newest commit", site.site)
            } else {
                format!("{}: lagging\n{why}", site.site)
            })
        );
        let by_name: BTreeMap<&str, &CompositionView> = site
            .symphonies
            .iter()
            .flat_map(|y| &y.compositions)
            .map(|c| (c.composition.as_str(), c))
            .collect();
        for (j, comp) in view.compositions.iter().enumerate() {
            let x = label_w + j * (CELL + GAP);
            let c = by_name.get(comp.as_str());
            let state = c.map(|c| c.state.as_str()).unwrap_or("absent");
            let tip = match c {
                Some(c) => tooltip(&site.site, c),
                None => format!("{} {comp}: not at this site", site.site),
            };
            let _ = writeln!(
                out,
                r##"<rect class="cell" data-site="{}" data-composition="{}" data-state="{state}" x="{x}" y="{y}" width="{CELL}" height="{CELL}" rx="3" fill="{}" stroke="#d0d7de"><title>{}</title></rect>"##,
                esc(&site.site),
                esc(comp),
                colour(state),
                esc(&tip)
            );
        }
    }
    for (k, (state, c)) in STATES.iter().enumerate() {
        let x = 8 + k * 96;
        let _ = writeln!(
            out,
            r##"<g class="legend"><rect x="{x}" y="{legend_y}" width="14" height="14" rx="3" fill="{c}" stroke="#d0d7de"/><text x="{}" y="{}" fill="#1f2328">{state}</text></g>"##,
            x + 18,
            legend_y + 11
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="8" y="{}" fill="#57606a">* lagging: not every composition installed at the newest commit (hover for why)</text>"##,
        legend_y + 32
    );
    out.push_str("</svg>\n");
    out
}

fn tooltip(site: &str, c: &CompositionView) -> String {
    let mut t = format!("{site} {}: {}", c.composition, c.state);
    if let Some(d) = &c.digest {
        let _ = write!(t, "\ndigest {}", short(d));
    }
    if let Some(e) = &c.error {
        let _ = write!(t, "\n{}: {}", e.code, e.message);
    } else if let (Some(w), true) = (&c.window, !matches!(c.state, State::Installed)) {
        if !w.open {
            let next = w
                .next_open
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "never".into());
            let _ = write!(t, "\nwindow {} closed, opens {next}", w.name);
        }
    } else if let Some(r) = &c.reason {
        let _ = write!(t, "\n{r}");
    }
    t
}

/// Text and attribute values for XML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters, even escaped.
            c if c.is_control() && !matches!(c, '\n' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(
            esc(r#"a<b>&"c"'d'"#),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
        assert_eq!(esc("x\u{1}y\nz"), "x\u{fffd}y\nz");
    }

    #[test]
    fn every_state_has_a_colour_of_its_own() {
        for s in [
            State::Pending,
            State::Staging,
            State::Staged,
            State::Installing,
            State::Installed,
            State::Failed,
            State::Removing,
            State::Removed,
        ] {
            assert_ne!(colour(s.as_str()), "#8c959f", "{s}");
        }
        let mut colours: Vec<_> = STATES.iter().map(|(_, c)| *c).collect();
        colours.sort();
        colours.dedup();
        assert_eq!(colours.len(), STATES.len());
    }
}
