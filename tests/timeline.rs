//! `timeline.svg`: the status branch's picture of what was staged and
//! applied when, beside `summary.md` and from `fermata status --format svg`.

mod util;

use util::{git, TestRepo};

const CLOSED: &str = "2026-11-21T06:00:00Z";
const OPEN: &str = "2026-11-28T02:10:00Z";

/// Two compositions in the `sat` window: staged Saturday morning after the
/// window, installed in the next one.
fn history() -> (TestRepo, tempfile::TempDir) {
    let repo = TestRepo::new();
    util::minimal(&repo).write("window.yaml", util::SAT_WINDOW).write(
        "symphony.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: shop}\nspec:\n  window: sat\n  variations:\n    - {name: a, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: a}]}\n    - {name: b, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: b}]}\n",
    );
    repo.commit("A");
    let state = tempfile::tempdir().expect("temp dir");
    for now in [CLOSED, OPEN] {
        let run = util::run_once(state.path(), &repo, now);
        assert_eq!(run.code, 0, "{run:?}");
    }
    (repo, state)
}

fn rows(svg: &str) -> Vec<(String, Vec<String>)> {
    let doc = roxmltree::Document::parse(svg).expect("well-formed XML");
    doc.descendants()
        .filter(|n| n.attribute("class") == Some("row"))
        .map(|row| {
            let states = row
                .descendants()
                .filter(|n| n.attribute("class") == Some("segment"))
                .filter_map(|n| n.attribute("data-state").map(str::to_string))
                .collect();
            (
                row.attribute("data-composition").unwrap_or("").to_string(),
                states,
            )
        })
        .collect()
}

#[test]
fn the_status_branch_carries_a_picture_with_a_row_per_composition() {
    let (repo, _state) = history();
    let svg = git(repo.path(), &["show", "fermata/status:main/timeline.svg"]);
    let want = vec![
        (
            "shop/a".to_string(),
            vec!["staged".to_string(), "installed".to_string()],
        ),
        (
            "shop/b".to_string(),
            vec!["staged".to_string(), "installed".to_string()],
        ),
    ];
    assert_eq!(rows(&svg), want, "{svg}");
    assert!(svg.contains(r#"class="window""#), "the openings are shaded");
    assert!(svg.contains(r#"<g class="now">"#));
    assert!(svg.contains(r#"<g class="commit">"#));
    let summary = git(repo.path(), &["show", "fermata/status:main/summary.md"]);
    assert!(summary.contains("](timeline.svg)"), "{summary}");

    // The same picture on demand, at a later instant.
    let p = repo.path().to_str().expect("utf-8");
    let run = util::fermata(&[
        "status",
        "--repo",
        p,
        "--format",
        "svg",
        "--branch",
        "main",
        "--now",
        "2026-11-29T12:00:00Z",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(rows(&run.stdout), want);
}

/// What GitHub or Gitea shows must render: librsvg (`rsvg-convert`,
/// Debian's librsvg2-bin, installed by `.ci/run`) turns it into a PNG.
#[test]
fn the_picture_renders_to_png() {
    let (repo, _state) = history();
    let dir = tempfile::tempdir().expect("temp dir");
    let svg = dir.path().join("timeline.svg");
    std::fs::write(
        &svg,
        git(repo.path(), &["show", "fermata/status:main/timeline.svg"]),
    )
    .expect("write");
    let png = dir.path().join("timeline.png");
    let out = std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(&svg)
        .output()
        .expect("rsvg-convert runs (apt-get install librsvg2-bin)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("a PNG");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
}
