//! The `--forge*` flags, for flattening into `fermata run`: which forge, where
//! its API is, which repository, and where the token comes from (a file or
//! an environment variable, never the command line, where `ps` shows it).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::http::HttpSettings;
use super::token::Token;
use super::{Forge, ForgeError, GitHub, GitLab, Gitea};

/// The forges fermata speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForgeKind {
    /// GitHub.com or GitHub Enterprise Server (REST v3).
    #[value(name = "github")]
    GitHub,
    /// Gitea or Forgejo (API v1).
    #[value(name = "gitea")]
    Gitea,
    /// GitLab.com or self-managed GitLab (API v4).
    #[value(name = "gitlab")]
    GitLab,
}

impl ForgeKind {
    pub fn name(self) -> &'static str {
        match self {
            ForgeKind::GitHub => "github",
            ForgeKind::Gitea => "gitea",
            ForgeKind::GitLab => "gitlab",
        }
    }
}

/// Pull-request plans and commit statuses on a forge (off without `--forge`).
#[derive(Debug, Clone, Default, Args)]
pub struct ForgeArgs {
    /// Report to this forge: plan comments on pull requests, commit statuses.
    #[arg(long, env = "FERMATA_FORGE", value_enum, value_name = "KIND")]
    pub forge: Option<ForgeKind>,
    /// The forge's API (GitHub: `https://api.github.com` by default, or
    /// `https://HOST/api/v3`; Gitea and GitLab: the server, e.g. `https://git.example.com`).
    #[arg(
        long,
        env = "FERMATA_FORGE_URL",
        value_name = "URL",
        requires = "forge"
    )]
    pub forge_url: Option<String>,
    /// The repository: OWNER/NAME (GitLab: the project path, GROUP[/SUBGROUP]/NAME).
    #[arg(
        long,
        env = "FERMATA_FORGE_REPO",
        value_name = "OWNER/NAME",
        requires = "forge"
    )]
    pub forge_repo: Option<String>,
    /// A file holding the API token (surrounding whitespace trimmed).
    #[arg(
        long,
        env = "FERMATA_FORGE_TOKEN_FILE",
        value_name = "PATH",
        requires = "forge",
        conflicts_with = "forge_token_env"
    )]
    pub forge_token_file: Option<PathBuf>,
    /// An environment variable holding the API token.
    #[arg(
        long,
        env = "FERMATA_FORGE_TOKEN_ENV",
        value_name = "VAR",
        requires = "forge"
    )]
    pub forge_token_env: Option<String>,
}

impl ForgeArgs {
    /// The configured forge, `None` without `--forge`. Reads the token now, so
    /// a missing file or variable stops fermata at start, not at the first
    /// pull request.
    pub fn build(&self) -> Result<Option<Arc<dyn Forge>>, ForgeError> {
        self.build_with(HttpSettings::default())
    }

    /// [`ForgeArgs::build`] with other timeouts, retries and rate-limit waits.
    pub fn build_with(&self, settings: HttpSettings) -> Result<Option<Arc<dyn Forge>>, ForgeError> {
        let Some(kind) = self.forge else {
            let stray = [
                ("--forge-url", self.forge_url.is_some()),
                ("--forge-repo", self.forge_repo.is_some()),
                ("--forge-token-file", self.forge_token_file.is_some()),
                ("--forge-token-env", self.forge_token_env.is_some()),
            ];
            return match stray.iter().find(|(_, set)| *set) {
                Some((flag, _)) => Err(ForgeError::Config(format!(
                    "{flag} needs --forge github|gitea|gitlab"
                ))),
                None => Ok(None),
            };
        };
        let name = kind.name();
        let repo = self.forge_repo.as_deref().ok_or_else(|| {
            ForgeError::Config(match kind {
                ForgeKind::GitLab => {
                    "--forge gitlab needs --forge-repo GROUP/NAME (the project path)".to_string()
                }
                _ => format!("--forge {name} needs --forge-repo OWNER/NAME"),
            })
        })?;
        let url = match (kind, self.forge_url.as_deref()) {
            (_, Some(url)) => url,
            (ForgeKind::GitHub, None) => super::github::DEFAULT_API,
            (_, None) => {
                return Err(ForgeError::Config(format!(
                    "--forge {name} needs --forge-url (the server, e.g. https://git.example.com)"
                )))
            }
        };
        let token = match (&self.forge_token_file, &self.forge_token_env) {
            (Some(_), Some(_)) => {
                return Err(ForgeError::Config(
                    "--forge-token-file and --forge-token-env exclude each other: give one".into(),
                ))
            }
            (Some(path), None) => Token::from_file(path),
            (None, Some(var)) => Token::from_env(var),
            (None, None) => {
                return Err(ForgeError::Config(format!(
                    "--forge {name} needs --forge-token-file PATH or --forge-token-env VAR"
                )))
            }
        }
        .map_err(|e| match e {
            ForgeError::Config(m) => ForgeError::Config(format!("--forge {name}: {m}")),
            other => other,
        })?;
        let url_is_plain_http = url.trim_start().starts_with("http://");
        let forge: Arc<dyn Forge> = match kind {
            ForgeKind::GitHub => Arc::new(GitHub::new(url, repo, token, settings)?),
            ForgeKind::Gitea => Arc::new(Gitea::new(url, repo, token, settings)?),
            ForgeKind::GitLab => Arc::new(GitLab::new(url, repo, token, settings)?),
        };
        if url_is_plain_http {
            tracing::warn!(
                forge = name,
                url,
                "the forge API is plain http: the token crosses the network unencrypted"
            );
        }
        Ok(Some(forge))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        forge: ForgeArgs,
    }

    fn parse(args: &[&str]) -> Result<ForgeArgs, clap::Error> {
        let mut argv = vec!["fermata"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| c.forge)
    }

    fn build_err(args: &[&str]) -> String {
        match parse(args).unwrap().build() {
            Ok(f) => panic!("expected an error, got {f:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_forge_is_none() {
        assert!(parse(&[]).unwrap().build().unwrap().is_none());
    }

    #[test]
    fn missing_pieces_are_named() {
        let e = build_err(&[
            "--forge",
            "gitlab",
            "--forge-repo",
            "a/b",
            "--forge-token-env",
            "X",
        ]);
        assert!(e.contains("--forge gitlab needs --forge-url"), "{e}");
        let e = build_err(&[
            "--forge",
            "gitea",
            "--forge-repo",
            "a/b",
            "--forge-token-env",
            "X",
        ]);
        assert!(e.contains("--forge gitea needs --forge-url"), "{e}");
        let e = build_err(&["--forge", "github", "--forge-repo", "a/b"]);
        assert!(
            e.contains("--forge github needs --forge-token-file PATH or --forge-token-env VAR"),
            "{e}"
        );
        let e = build_err(&["--forge", "github", "--forge-token-env", "X"]);
        assert!(
            e.contains("--forge github needs --forge-repo OWNER/NAME"),
            "{e}"
        );
        let e = build_err(&[
            "--forge",
            "github",
            "--forge-repo",
            "a/b",
            "--forge-token-env",
            "FERMATA_TEST_SURELY_UNSET_VARIABLE",
        ]);
        assert!(
            e.contains("FERMATA_TEST_SURELY_UNSET_VARIABLE is not set"),
            "{e}"
        );
    }

    #[test]
    fn clap_refuses_contradictions() {
        assert!(parse(&["--forge", "bitbucket"]).is_err());
        assert!(
            parse(&["--forge-url", "https://x"]).is_err(),
            "--forge-url alone"
        );
        assert!(parse(&[
            "--forge",
            "github",
            "--forge-token-file",
            "/t",
            "--forge-token-env",
            "T"
        ])
        .is_err());
        // Built by hand, the same contradictions are still caught.
        let e = ForgeArgs {
            forge_url: Some("https://x".into()),
            ..ForgeArgs::default()
        }
        .build()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--forge-url needs --forge"), "{e}");
    }

    #[test]
    fn github_defaults_to_api_github_com() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "tok-en\n").unwrap();
        let args = parse(&[
            "--forge",
            "github",
            "--forge-repo",
            "acme/fleet",
            "--forge-token-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        let forge = args.build().unwrap().unwrap();
        assert_eq!(forge.kind(), "github");
        let shown = format!("{forge:?}");
        assert!(shown.contains("https://api.github.com/"), "{shown}");
        assert!(!shown.contains("tok-en"), "{shown}");
    }

    #[test]
    fn bad_repo_and_url_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "tok").unwrap();
        let f = file.to_str().unwrap();
        let e = build_err(&[
            "--forge",
            "gitea",
            "--forge-url",
            "https://g",
            "--forge-repo",
            "nope",
            "--forge-token-file",
            f,
        ]);
        assert!(e.contains("OWNER/NAME"), "{e}");
        let e = build_err(&[
            "--forge",
            "gitlab",
            "--forge-url",
            "gitlab.example.com",
            "--forge-repo",
            "a/b",
            "--forge-token-file",
            f,
        ]);
        assert!(e.contains("API URL"), "{e}");
    }
}
