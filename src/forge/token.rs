//! The forge API token. It lives only in this type and, on the wire, in one
//! request header: it is never part of a URL, a log line or an error message,
//! and its `Debug` and `Display` print `***`, so a stray `{:?}` on a provider
//! or its settings cannot leak it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::ForgeError;

/// A secret API token (GitHub/Gitea personal or app token, GitLab private,
/// project or group token).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// A token from its text; surrounding whitespace (the newline of a file
    /// or of `echo $T`) is dropped. Empty, or holding whitespace or control
    /// characters inside (it would not fit in an HTTP header), is refused;
    /// the message never repeats the text.
    pub fn new(text: &str) -> Result<Token, ForgeError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ForgeError::Config("the token is empty".into()));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ForgeError::Config(
                "the token contains whitespace or control characters".into(),
            ));
        }
        Ok(Token(text.into()))
    }

    /// Reads the token from a file (a mounted Kubernetes Secret, say), trimmed.
    pub fn from_file(path: &Path) -> Result<Token, ForgeError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ForgeError::Config(format!("token file {}: cannot read: {e}", path.display()))
        })?;
        Token::new(&text)
            .map_err(|e| ForgeError::Config(format!("token file {}: {}", path.display(), bare(e))))
    }

    /// Reads the token from environment variable `var`, trimmed.
    pub fn from_env(var: &str) -> Result<Token, ForgeError> {
        match std::env::var(var) {
            Ok(text) => Token::new(&text).map_err(|e| {
                ForgeError::Config(format!("environment variable {var}: {}", bare(e)))
            }),
            Err(std::env::VarError::NotPresent) => Err(ForgeError::Config(format!(
                "environment variable {var} is not set"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(ForgeError::Config(format!(
                "environment variable {var} is not valid UTF-8"
            ))),
        }
    }

    /// The secret itself, for the one place that needs it: the auth header.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

/// The message of a `Config` error without its variant's prefix, to re-wrap it.
fn bare(e: ForgeError) -> String {
    match e {
        ForgeError::Config(m) => m,
        other => other.to_string(),
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "ghp_s3cretT0kenValue";

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let t = Token::new(SECRET).unwrap();
        assert_eq!(format!("{t}"), "***");
        assert_eq!(format!("{t:?}"), "Token(***)");
        assert!(!format!("{:?}", Some(&t)).contains(SECRET));
        assert_eq!(t.secret(), SECRET);
    }

    #[test]
    fn file_is_trimmed_and_empty_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, format!("  {SECRET}\n\n")).unwrap();
        assert_eq!(Token::from_file(&p).unwrap().secret(), SECRET);

        std::fs::write(&p, "\n").unwrap();
        let e = Token::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("is empty") && e.contains("token"), "{e}");

        let e = Token::from_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn inner_whitespace_is_refused_without_echoing_the_text() {
        let e = Token::new("abc def-secret").unwrap_err().to_string();
        assert!(!e.contains("def-secret"), "{e}");
        assert!(e.contains("whitespace"), "{e}");
    }

    #[test]
    fn env_var_is_read_and_trimmed() {
        // A name no other test uses: the environment is process-wide.
        let var = "FERMATA_TEST_FORGE_TOKEN_TOKEN_RS";
        std::env::set_var(var, format!("{SECRET}\n"));
        assert_eq!(Token::from_env(var).unwrap().secret(), SECRET);
        std::env::remove_var(var);
        let e = Token::from_env(var).unwrap_err().to_string();
        assert!(e.contains("is not set"), "{e}");
    }
}
