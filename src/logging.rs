//! Log set-up: human-readable lines on stderr, filtered by `RUST_LOG` or
//! by the default level [`crate::settings::log_level`] derives from -v / -q.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `level` applies unless `RUST_LOG` is
/// set.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colour only on a terminal (and never with NO_COLOR): logs in files and
    // journald stay plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
