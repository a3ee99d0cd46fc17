//! How a fatal error reaches the user: one line, each cause once.
//!
//! The library crates' `thiserror` variants put their cause in their own
//! message (`"{path}: {source}"`) *and* expose it through
//! [`std::error::Error::source`], so printing anyhow's whole chain (`{:#}`)
//! would say every cause twice. [`format_error`] walks the chain and leaves
//! out a cause whose text the message so far already contains.

/// `err` and its causes joined with `": "`, skipping a cause already part
/// of the message (a variant that printed its `source` itself).
pub fn format_error(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `thiserror`-style error that prints its source and exposes it.
    #[derive(Debug)]
    struct Wrapper {
        path: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let source = std::io::Error::from_raw_os_error(17);
        let cause = source.to_string();
        let err = anyhow::Error::new(Wrapper { path: "/x", source }).context("peer failed");
        let text = format_error(&err);
        assert_eq!(text, format!("peer failed: /x: {cause}"));
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
    }

    #[test]
    fn distinct_causes_all_print_in_order() {
        let err = anyhow::anyhow!("disk full").context("cannot write /x").context("peer failed");
        assert_eq!(format_error(&err), "peer failed: cannot write /x: disk full");
        let err = anyhow::anyhow!("just one");
        assert_eq!(format_error(&err), "just one");
    }
}
