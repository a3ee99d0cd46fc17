//! `dartsync completions SHELL` and `dartsync man`: shell completion
//! scripts and the roff man page, generated from the clap definitions in
//! [`crate::cli`] so they never drift from the real command line.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "dartsync", out);
}

/// Writes the dartsync(1) man page to `out`.
pub fn man(out: &mut dyn Write) -> anyhow::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out).context("cannot write the man page")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let mut out = Vec::new();
            completions(*shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("dartsync") && text.contains("status"), "{shell}:\n{text}");
        }
    }

    #[test]
    fn man_page_is_roff() {
        let mut out = Vec::new();
        man(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(".ie") || text.starts_with(".TH"), "{}", &text[..80]);
        assert!(text.contains(".TH dartsync 1"), "{text}");
    }
}
