//! Error text for people: an error and every cause below it on one line,
//! as anyhow's `{:#}` prints it, without anyhow inside the library.

/// `error: cause: deeper cause`, skipping a cause an error already repeats
/// in its own message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot fetch {0}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[test]
    fn every_cause_once() {
        let e = Outer("file:///r.git", std::io::Error::other("no such file"));
        assert_eq!(super::chain(&e), "cannot fetch file:///r.git: no such file");
        let plain = std::io::Error::other("alone");
        assert_eq!(super::chain(&plain), "alone");
    }
}
