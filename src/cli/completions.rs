//! `fermata completions SHELL` and `fermata man`: generated from the same
//! clap definitions the commands parse with, so they cannot drift.

use std::process::ExitCode;

use clap::{Args, CommandFactory};

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// The completion script on stdout: `fermata completions bash > /etc/bash_completion.d/fermata`.
pub fn completions(a: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "fermata", &mut out);
    out!("{}", String::from_utf8_lossy(&out));
    Ok(ExitCode::SUCCESS)
}

/// The man page (roff) on stdout: `fermata man > fermata.1`.
pub fn man() -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    out!("{}", String::from_utf8_lossy(&out));
    Ok(ExitCode::SUCCESS)
}
