//! `dartsync completions SHELL` and `dartsync man`: shell completion
//! scripts and the roff man page, generated from the clap definitions in
//! [`crate::cli`] so they never drift from the real command line.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "dartsync", &mut out);
    out
}

/// The dartsync(1) man page.
pub fn man() -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out).context("cannot render the man page")?;
    Ok(out)
}

/// Writes `text` to stdout; a reader that went away early (`| head`) is
/// not an error.
pub fn print(text: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let text = String::from_utf8(completions(*shell)).unwrap();
            assert!(text.contains("dartsync") && text.contains("status"), "{shell}:\n{text}");
        }
    }

    #[test]
    fn man_page_is_roff() {
        let text = String::from_utf8(man().unwrap()).unwrap();
        assert!(text.starts_with(".ie") || text.starts_with(".TH"), "{}", &text[..80]);
        assert!(text.contains(".TH dartsync 1"), "{text}");
    }
}
