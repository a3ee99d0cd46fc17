//! Device names: what a person calls each peer ("bobs-laptop"), carried
//! in `Register`, shown in logs, in `dartsync status` and in the names of
//! conflict copies.
//!
//! A name comes from the user (`--name`) or the hostname, so it is
//! checked like any other input: 1 to [`MAX_DEVICE_NAME`] bytes, no
//! control characters, not blank. [`file_name_part`] turns one into the
//! piece a conflict copy's file name may carry.

use serde::{Deserialize, Serialize};

/// Where a device stands with its tracker (see `dartsync tracker devices`).
///
/// The tracker decides: under `admit = "auto"` a new device is admitted on
/// its first registration; under `admit = "approve"` it waits, pending,
/// until `dartsync tracker admit`. A revoked device is refused until it is
/// admitted again. Peers serve chunks only to admitted devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// A member: syncs and is served.
    #[default]
    Admitted,
    /// Waits for the operator's approval: receives and sends nothing.
    Pending,
    /// Refused: its sessions are dropped and its registrations refused.
    Revoked,
}

impl DeviceState {
    /// The word people see ("admitted", "pending", "revoked").
    pub fn label(self) -> &'static str {
        match self {
            DeviceState::Admitted => "admitted",
            DeviceState::Pending => "pending",
            DeviceState::Revoked => "revoked",
        }
    }
}

/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME: usize = 64;
/// Longest name part of a conflict copy's file name.
pub const MAX_FILE_NAME_PART: usize = 32;

/// Why a device name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceNameError {
    /// Empty or only spaces.
    #[error("a device name cannot be blank")]
    Blank,
    /// Over [`MAX_DEVICE_NAME`] bytes.
    #[error("a device name is at most {MAX_DEVICE_NAME} bytes, this one has {0}")]
    TooLong(usize),
    /// Contains a control character (newline, tab, escape...).
    #[error("a device name cannot contain control characters")]
    Control,
}

/// Checks a device name (from the command line, a config file or the
/// network).
pub fn check_device_name(name: &str) -> Result<(), DeviceNameError> {
    if name.trim().is_empty() {
        return Err(DeviceNameError::Blank);
    }
    if name.len() > MAX_DEVICE_NAME {
        return Err(DeviceNameError::TooLong(name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(DeviceNameError::Control);
    }
    Ok(())
}

/// This machine's hostname, when it makes a valid device name; else
/// `"peer"`.
pub fn default_device_name() -> String {
    let host = hostname();
    let host = host.trim();
    // "bob-laptop.local" -> "bob-laptop": the domain adds nothing on a LAN.
    let host = host.split('.').next().unwrap_or(host);
    let host: String = host.chars().take(MAX_DEVICE_NAME).collect();
    if check_device_name(&host).is_ok() && host.len() <= MAX_DEVICE_NAME { host } else { "peer".to_owned() }
}

/// This machine's host name as the LAN knows it (for URLs), `localhost`
/// when it has none.
pub fn local_host_name() -> String {
    let host = hostname();
    let host = host.trim();
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        "localhost".to_owned()
    } else {
        host.to_owned()
    }
}

/// The kernel's host name, untrimmed (empty when it cannot be read).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default()
}

/// `name` as a file-name piece: lower-case ASCII letters, digits and
/// single dashes, at most [`MAX_FILE_NAME_PART`] bytes; `"device"` when
/// nothing is left ("Bob's Laptop" -> "bob-s-laptop").
pub fn file_name_part(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= MAX_FILE_NAME_PART {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() { "device".to_owned() } else { out.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_device_name("bobs-laptop").is_ok());
        assert!(check_device_name("Bob’s MacBook Pro").is_ok());
        assert_eq!(check_device_name("  "), Err(DeviceNameError::Blank));
        assert_eq!(check_device_name("a\nb"), Err(DeviceNameError::Control));
        assert_eq!(check_device_name(&"x".repeat(65)), Err(DeviceNameError::TooLong(65)));
        let host = default_device_name();
        assert!(check_device_name(&host).is_ok(), "{host:?}");
    }

    #[test]
    fn file_name_parts_are_safe() {
        assert_eq!(file_name_part("Bob's Laptop"), "bob-s-laptop");
        assert_eq!(file_name_part("../../etc"), "etc");
        assert_eq!(file_name_part("日本"), "device");
        assert_eq!(file_name_part("a--b__c"), "a-b-c");
        assert!(file_name_part(&"ab".repeat(40)).len() <= MAX_FILE_NAME_PART);
    }
}
