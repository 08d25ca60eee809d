//! `${VAR}` substitution in manifest templates, as Flux's post-build
//! substitution does it: text in, text out, `$${` for a literal `${`, and an
//! undefined variable is an error, never an empty string.

/// Where and why substitution failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstError {
    pub line: usize,
    pub message: String,
}

/// Replaces every `${NAME}` in `text` with `lookup(NAME)`.
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Result<String, String>,
) -> Result<String, SubstError> {
    let mut out = String::with_capacity(text.len());
    let mut line = 1;
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        let (before, at) = rest.split_at(i);
        line += before.matches('\n').count();
        out.push_str(before);
        if let Some(after) = at.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = at.strip_prefix("${") {
            let end = after
                .find(['}', '\n'])
                .filter(|&e| after.as_bytes()[e] == b'}')
                .ok_or_else(|| SubstError {
                    line,
                    message: "unterminated ${: expected } on the same line".to_string(),
                })?;
            let name = after[..end].trim();
            if name.is_empty() {
                return Err(SubstError {
                    line,
                    message: "empty ${}".to_string(),
                });
            }
            let value = lookup(name).map_err(|message| SubstError { line, message })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &at[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Result<String, String> {
        match name {
            "TAG" => Ok("v3".into()),
            "N" => Ok("3".into()),
            _ => Err(format!("undefined variable ${{{name}}}")),
        }
    }

    #[test]
    fn substitutes_and_escapes() {
        let got = substitute(
            "image: app:${TAG}\nreplicas: ${ N }\ncost: $5 $${TAG}\n",
            env,
        )
        .unwrap();
        assert_eq!(got, "image: app:v3\nreplicas: 3\ncost: $5 ${TAG}\n");
    }

    #[test]
    fn undefined_is_an_error_with_its_line() {
        let err = substitute("a: 1\nb: ${NOPE}\n", env).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("${NOPE}"), "{}", err.message);
        let err = substitute("a: ${TAG\nb: }", env).unwrap_err();
        assert_eq!(err.line, 1);
    }
}
