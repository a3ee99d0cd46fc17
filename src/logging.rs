//! Log set-up: human-readable lines on stderr, filtered by `RUST_LOG` or
//! by the default level [`crate::settings::log_level`] derives from -v / -q.
//!
//! Records of crates that log through the `log` facade reach the same
//! subscriber, through [`LogBridge`]. The file watcher's (`notify`) records
//! are rewritten on the way ([`watcher_record`]): notify logs its errors
//! as `{:?}` dumps (`Os { code: 22, kind: InvalidInput, ... }`), five at
//! INFO for every folder renamed or deleted, when it fails to remove the
//! inotify watch of a folder the kernel already forgot. Those become one
//! readable DEBUG line each; anything else it reports is a WARN, in words.

use std::io::IsTerminal;

use tracing::Level;
use tracing_log::{AsLog, LogTracer};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `level` applies unless `RUST_LOG` is
/// set.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colour only on a terminal (and never with NO_COLOR): logs in files and
    // journald stay plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .finish();
    // Both fail only if something installed its own first; then it logs.
    let _ = tracing::subscriber::set_global_default(subscriber);
    if log::set_boxed_logger(Box::new(LogBridge { inner: LogTracer::new() })).is_ok() {
        log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    }
}

/// The `log` facade's logger: hands records to `tracing`, rewriting the
/// file watcher's (see the module header).
struct LogBridge {
    inner: LogTracer,
}

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !record.target().starts_with("notify") || record.level() > log::Level::Info {
            return self.inner.log(record);
        }
        let (level, message) = watcher_record(record.level(), &record.args().to_string());
        match level {
            Level::ERROR => tracing::error!(target: "notify", "{message}"),
            Level::WARN => tracing::warn!(target: "notify", "{message}"),
            Level::INFO => tracing::info!(target: "notify", "{message}"),
            Level::DEBUG => tracing::debug!(target: "notify", "{message}"),
            Level::TRACE => tracing::trace!(target: "notify", "{message}"),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The level and text a `notify` record at `level` saying `text` is logged
/// with: an OS error dump becomes its message (`Invalid argument (os error
/// 22)`); failing to remove the watch of a folder that no longer exists
/// (EINVAL or ENOENT from `inotify_rm_watch`, or no such watch) is DEBUG;
/// any other error at least WARN; notify's other INFO chatter DEBUG.
fn watcher_record(level: log::Level, text: &str) -> (Level, String) {
    const VANISHED: &str = "a watch on a folder that no longer exists was already gone";
    let removing = text.to_lowercase().contains("remove");
    if let Some(at) = text.find("Os { code: ") {
        let digits: String = text[at + "Os { code: ".len()..].chars().take_while(char::is_ascii_digit).collect();
        if let Ok(code) = digits.parse::<i32>() {
            let cause = std::io::Error::from_raw_os_error(code);
            if removing && (code == EINVAL || code == ENOENT) {
                return (Level::DEBUG, format!("file watcher: {VANISHED} ({cause})"));
            }
            let what = text[..at].trim_end().trim_end_matches(':');
            let level = if level == log::Level::Error { Level::ERROR } else { Level::WARN };
            return (level, format!("file watcher: {what}: {cause}"));
        }
    }
    if text.contains("WatchNotFound") {
        return (Level::DEBUG, format!("file watcher: {VANISHED} (no watch was found)"));
    }
    match level {
        log::Level::Error => (Level::ERROR, text.to_owned()),
        log::Level::Warn => (Level::WARN, text.to_owned()),
        _ => (Level::DEBUG, text.to_owned()),
    }
}

/// `inotify_rm_watch`: the watch descriptor is not valid (any more).
const EINVAL: i32 = 22;
/// The folder is gone.
const ENOENT: i32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vanished_folders_watch_is_a_readable_debug_line() {
        let text = r#"unable to remove watch descriptor from inotify: Os { code: 22, kind: InvalidInput, message: "Invalid argument" }"#;
        let (level, message) = watcher_record(log::Level::Info, text);
        assert_eq!(level, Level::DEBUG);
        assert_eq!(
            message,
            "file watcher: a watch on a folder that no longer exists was already gone (Invalid argument (os error 22))"
        );
        let text = r#"Unable to remove the path from the watches: Error { kind: WatchNotFound, paths: ["/x/a"] }"#;
        assert_eq!(watcher_record(log::Level::Warn, text).0, Level::DEBUG);
        let text = r#"unable to remove watch descriptor from inotify: Os { code: 2, kind: NotFound, message: "No such file or directory" }"#;
        assert_eq!(watcher_record(log::Level::Info, text).0, Level::DEBUG);
    }

    #[test]
    fn other_watcher_errors_are_warnings_in_words() {
        let text = r#"unable to remove watch descriptor from inotify: Os { code: 9, kind: Uncategorized, message: "Bad file descriptor" }"#;
        let (level, message) = watcher_record(log::Level::Info, text);
        assert_eq!(level, Level::WARN);
        assert_eq!(
            message,
            format!(
                "file watcher: unable to remove watch descriptor from inotify: {}",
                std::io::Error::from_raw_os_error(9)
            )
        );
        assert!(!message.contains("Os {"), "{message}");
        let text = r#"boom: Os { code: 5, kind: Uncategorized, message: "Input/output error" }"#;
        assert_eq!(watcher_record(log::Level::Error, text).0, Level::ERROR);
    }

    #[test]
    fn other_records_keep_their_text_and_info_becomes_debug() {
        assert_eq!(watcher_record(log::Level::Info, "skipping event"), (Level::DEBUG, "skipping event".to_owned()));
        assert_eq!(watcher_record(log::Level::Warn, "odd"), (Level::WARN, "odd".to_owned()));
    }
}
