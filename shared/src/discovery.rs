//! LAN discovery, the pure part: what a tracker announces over DNS-SD
//! (mDNS), how an announcement heard on the network is checked, and which
//! tracker a peer (or `dartsync join`) picks among those it heard.
//!
//! No I/O here: the tracker's announcer (`dartsync-tracker`, module
//! `discovery`) and the peer's browser (`dartsync-peer`, module
//! `discovery`) speak mDNS with the `mdns-sd` crate and hand what they
//! resolved to [`Candidate::parse`].
//!
//! # The announcement
//! Service type [`SERVICE_TYPE`] (`_dartsync._tcp.local.`), the tracker's
//! port in the SRV record, and four TXT properties:
//! - `v=1`: the announcement's version ([`TXT_VERSION`]);
//! - `fp=`: the cluster's *discovery fingerprint*
//!   ([`DiscoveryFingerprint`], 32 hex digits derived from the cluster key
//!   with blake3's key derivation under its own context string). It tells
//!   members of one cluster their tracker from another cluster's; it is
//!   not the key, nothing about the key can be computed from it, and it is
//!   not the 4-byte fingerprint of the logs;
//! - `id=`: the tracker's peer id (what a pinned peer compares first; the
//!   Noise handshake proves it later);
//! - `inv=`: the tracker's open invite *nameplates* (`1..=999`, comma
//!   separated, possibly empty), so `dartsync join N` finds the tracker that
//!   made invite N.
//!
//! Anyone on the LAN can read this, and anyone can announce anything: an
//! announcement only says where to dial. Trust comes from the Noise
//! handshake (the cluster key) and the tracker pin.
//!
//! # Hostile input
//! Everything heard is bounded and validated before use ([`Candidate::parse`]):
//! at most [`MAX_PROPERTIES`] TXT properties, none longer than
//! [`MAX_PROPERTY_LEN`] bytes, names at most [`MAX_NAME_LEN`], at most
//! [`MAX_ADDRESSES`] addresses, the version exactly `1`, every field in its
//! canonical form. A bad announcement is a typed [`AnnouncementError`],
//! never a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::id::PeerId;

/// The DNS-SD service type trackers announce.
pub const SERVICE_TYPE: &str = "_dartsync._tcp.local.";
/// The version of the TXT properties this build writes and reads.
pub const TXT_VERSION: &str = "1";
/// Nameplates are `1..=MAX_NAMEPLATE`.
pub const MAX_NAMEPLATE: u16 = 999;
/// At most this many open nameplates are announced (and accepted).
pub const MAX_NAMEPLATES: usize = 32;
/// At most this many TXT properties are looked at in one announcement.
pub const MAX_PROPERTIES: usize = 16;
/// The longest TXT property (key, `=`, value) DNS can carry.
pub const MAX_PROPERTY_LEN: usize = 255;
/// The longest instance or host name accepted.
pub const MAX_NAME_LEN: usize = 255;
/// At most this many addresses of one announcement are kept.
pub const MAX_ADDRESSES: usize = 16;
/// At most this many distinct announcements are kept while browsing.
pub const MAX_CANDIDATES: usize = 64;

/// The TXT keys.
const KEY_VERSION: &str = "v";
const KEY_FINGERPRINT: &str = "fp";
const KEY_ID: &str = "id";
const KEY_INVITES: &str = "inv";

/// The context string of the discovery fingerprint's key derivation.
pub const FINGERPRINT_CONTEXT: &str = "dartsync cluster discovery fingerprint v1";

/// The publishable fingerprint of a cluster key: the first 16 bytes of
/// `blake3::derive_key(FINGERPRINT_CONTEXT, key)`, shown as 32 lowercase
/// hex digits. Made by `ClusterKey::discovery_fingerprint`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiscoveryFingerprint(pub [u8; 16]);

impl DiscoveryFingerprint {
    /// The fingerprint of the raw key bytes.
    pub fn of_key(key: &[u8; 32]) -> Self {
        let derived = blake3::derive_key(FINGERPRINT_CONTEXT, key);
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&derived[..16]);
        DiscoveryFingerprint(fp)
    }

    /// The first 8 hex digits, for log lines.
    pub fn fmt_short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for DiscoveryFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for DiscoveryFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiscoveryFingerprint({self})")
    }
}

impl FromStr for DiscoveryFingerprint {
    type Err = AnnouncementError;

    /// Exactly 32 lowercase hex digits (the canonical form only).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AnnouncementError::BadFingerprint;
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad());
        }
        let bytes = crate::hex::decode(s).ok_or_else(bad)?;
        Ok(DiscoveryFingerprint(bytes.try_into().map_err(|_| bad())?))
    }
}

/// Why an announcement heard on the network was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncementError {
    /// More TXT properties than [`MAX_PROPERTIES`].
    #[error("too many TXT properties ({0})")]
    TooManyProperties(usize),
    /// A property longer than [`MAX_PROPERTY_LEN`].
    #[error("a TXT property is {0} bytes long")]
    OversizeProperty(usize),
    /// The same key twice.
    #[error("the TXT key {0:?} appears twice")]
    DuplicateKey(String),
    /// A required key is missing (or has no value).
    #[error("the TXT key {0:?} is missing")]
    Missing(&'static str),
    /// A value is not UTF-8 text.
    #[error("the TXT value of {0:?} is not text")]
    NotText(&'static str),
    /// Another version of the announcement (a newer DartSync, or noise).
    #[error("announcement version {0:?}, this build reads version {TXT_VERSION}")]
    WrongVersion(String),
    /// `fp` is not 32 lowercase hex digits.
    #[error("the cluster fingerprint is not 32 hex digits")]
    BadFingerprint,
    /// `id` is not a peer id.
    #[error("the tracker id is not a peer id")]
    BadId,
    /// `inv` is not a list of distinct nameplates.
    #[error("the invite list is malformed: {0}")]
    BadNameplates(&'static str),
    /// The instance or host name is empty or too long.
    #[error("the service name is empty or longer than {MAX_NAME_LEN} bytes")]
    BadName,
    /// Port 0.
    #[error("the service has port 0")]
    BadPort,
    /// No address that could be dialled (only loopback, unspecified or
    /// multicast ones, or none at all).
    #[error("the service has no usable address")]
    NoAddress,
}

/// Whether `n` is a valid nameplate (`1..=999`).
pub fn is_nameplate(n: u16) -> bool {
    (1..=MAX_NAMEPLATE).contains(&n)
}

/// The canonical form of a set of open nameplates: valid ones only,
/// sorted, without repeats, at most [`MAX_NAMEPLATES`] (the lowest kept).
/// Returns it and whether anything was dropped.
pub fn normalize_nameplates(nameplates: &[u16]) -> (Vec<u16>, bool) {
    let mut out: Vec<u16> = nameplates.iter().copied().filter(|n| is_nameplate(*n)).collect();
    out.sort_unstable();
    out.dedup();
    let mut dropped = out.len() != nameplates.len();
    if out.len() > MAX_NAMEPLATES {
        out.truncate(MAX_NAMEPLATES);
        dropped = true;
    }
    (out, dropped)
}

/// Parses the `inv` value: empty, or distinct canonical decimal nameplates
/// separated by commas.
fn parse_nameplates(text: &str) -> Result<Vec<u16>, AnnouncementError> {
    let bad = AnnouncementError::BadNameplates;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        if out.len() == MAX_NAMEPLATES {
            return Err(bad("too many nameplates"));
        }
        if part.is_empty() || part.len() > 3 || part.starts_with('0') || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a nameplate is not a number from 1 to 999"));
        }
        let n: u16 = part.parse().map_err(|_| bad("a nameplate is not a number from 1 to 999"))?;
        if out.contains(&n) {
            return Err(bad("a nameplate appears twice"));
        }
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

/// What a tracker announces in its TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The cluster's discovery fingerprint.
    pub fingerprint: DiscoveryFingerprint,
    /// The tracker's peer id.
    pub id: PeerId,
    /// Open invite nameplates, sorted, distinct, each `1..=999`.
    pub nameplates: Vec<u16>,
}

impl Announcement {
    /// An announcement; `nameplates` are normalized
    /// ([`normalize_nameplates`]).
    pub fn new(fingerprint: DiscoveryFingerprint, id: PeerId, nameplates: &[u16]) -> Self {
        Announcement { fingerprint, id, nameplates: normalize_nameplates(nameplates).0 }
    }

    /// The TXT properties to announce, in order.
    pub fn txt_properties(&self) -> Vec<(String, String)> {
        let inv = self.nameplates.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        vec![
            (KEY_VERSION.to_owned(), TXT_VERSION.to_owned()),
            (KEY_FINGERPRINT.to_owned(), self.fingerprint.to_string()),
            (KEY_ID.to_owned(), self.id.to_string()),
            (KEY_INVITES.to_owned(), inv),
        ]
    }

    /// Reads TXT properties heard on the network: `(key, value)` pairs, a
    /// key without `=` having no value. Keys compare case-insensitively
    /// (DNS-SD); unknown keys are ignored but count against
    /// [`MAX_PROPERTIES`].
    pub fn parse<'a, I>(properties: I) -> Result<Self, AnnouncementError>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        let mut known: BTreeMap<&'static str, Option<&'a [u8]>> = BTreeMap::new();
        let mut seen_other: Vec<String> = Vec::new();
        for (count, (key, value)) in properties.into_iter().enumerate() {
            if count >= MAX_PROPERTIES {
                return Err(AnnouncementError::TooManyProperties(count + 1));
            }
            let len = key.len() + value.map_or(0, |v| v.len() + 1);
            if len > MAX_PROPERTY_LEN {
                return Err(AnnouncementError::OversizeProperty(len));
            }
            let slot =
                [KEY_VERSION, KEY_FINGERPRINT, KEY_ID, KEY_INVITES].into_iter().find(|k| k.eq_ignore_ascii_case(key));
            match slot {
                Some(k) => {
                    if known.insert(k, value).is_some() {
                        return Err(AnnouncementError::DuplicateKey(k.to_owned()));
                    }
                }
                None => {
                    let lower = key.to_ascii_lowercase();
                    if seen_other.contains(&lower) {
                        return Err(AnnouncementError::DuplicateKey(lower));
                    }
                    seen_other.push(lower);
                }
            }
        }
        let text = |k: &'static str| -> Result<&'a str, AnnouncementError> {
            let value = known.get(k).copied().flatten().ok_or(AnnouncementError::Missing(k))?;
            std::str::from_utf8(value).map_err(|_| AnnouncementError::NotText(k))
        };
        let version = text(KEY_VERSION)?;
        if version != TXT_VERSION {
            let mut shown: String = version.chars().take(16).collect();
            if version.len() > shown.len() {
                shown.push('…');
            }
            return Err(AnnouncementError::WrongVersion(shown));
        }
        let fingerprint = text(KEY_FINGERPRINT)?.parse()?;
        let id_text = text(KEY_ID)?;
        if id_text.len() != 26 {
            return Err(AnnouncementError::BadId);
        }
        let id = id_text.parse::<PeerId>().map_err(|_| AnnouncementError::BadId)?;
        let nameplates = match known.get(KEY_INVITES).copied() {
            None | Some(None) => Vec::new(),
            Some(Some(_)) => parse_nameplates(text(KEY_INVITES)?)?,
        };
        Ok(Announcement { fingerprint, id, nameplates })
    }
}

/// One tracker heard on the LAN: its announcement and where to dial it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The DNS-SD instance's full name (`NAME._dartsync._tcp.local.`).
    pub instance: String,
    /// What it announced.
    pub announcement: Announcement,
    /// Its addresses with the announced port, IPv4 first, sorted.
    pub addrs: Vec<SocketAddr>,
}

/// Whether a peer could dial `ip` (not loopback, unspecified, multicast or
/// broadcast).
fn dialable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()),
    }
}

impl Candidate {
    /// Checks a resolved service: its full name, port, addresses and TXT
    /// properties. At most [`MAX_ADDRESSES`] usable addresses are kept.
    pub fn parse<'a, I>(
        instance: &str,
        port: u16,
        addresses: impl IntoIterator<Item = IpAddr>,
        properties: I,
    ) -> Result<Self, AnnouncementError>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        if instance.is_empty() || instance.len() > MAX_NAME_LEN {
            return Err(AnnouncementError::BadName);
        }
        if port == 0 {
            return Err(AnnouncementError::BadPort);
        }
        let announcement = Announcement::parse(properties)?;
        let mut ips: Vec<IpAddr> = addresses.into_iter().filter(dialable).take(MAX_ADDRESSES * 4).collect();
        // IPv4 first (false < true), then by address.
        ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
        ips.dedup();
        ips.truncate(MAX_ADDRESSES);
        if ips.is_empty() {
            return Err(AnnouncementError::NoAddress);
        }
        let addrs = ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
        Ok(Candidate { instance: instance.to_owned(), announcement, addrs })
    }

    /// The address to dial: the first (IPv4 first).
    pub fn addr(&self) -> SocketAddr {
        // `parse` keeps at least one address.
        self.addrs[0]
    }

    /// The tracker's id.
    pub fn id(&self) -> PeerId {
        self.announcement.id
    }
}

/// Which tracker to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// The tracker of the cluster with this fingerprint (a peer that holds
    /// the key).
    Fingerprint(DiscoveryFingerprint),
    /// The tracker whose open invites include this nameplate (`dartsync
    /// join N`, which does not hold the key yet).
    Nameplate(u16),
}

impl Filter {
    /// Whether `candidate` is what this filter looks for.
    pub fn matches(&self, candidate: &Candidate) -> bool {
        match self {
            Filter::Fingerprint(fp) => candidate.announcement.fingerprint == *fp,
            Filter::Nameplate(n) => candidate.announcement.nameplates.contains(n),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Fingerprint(fp) => write!(f, "the tracker of cluster {}", fp.fmt_short()),
            Filter::Nameplate(n) => write!(f, "a tracker with open invite {n}"),
        }
    }
}

/// What [`pick`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// Exactly one tracker matches (several announcements of one tracker
    /// id count as one; their addresses are merged).
    One(Candidate),
    /// No tracker matches.
    None,
    /// Several distinct trackers match: the caller cannot choose.
    Several(Vec<Candidate>),
}

/// The trackers among `candidates` that `filter` accepts, one per tracker
/// id (the first announcement of an id, with the addresses of the others
/// merged in), in the order given.
pub fn matching(candidates: &[Candidate], filter: &Filter) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for c in candidates.iter().filter(|c| filter.matches(c)) {
        match out.iter_mut().find(|o| o.id() == c.id()) {
            Some(o) => {
                for addr in &c.addrs {
                    if !o.addrs.contains(addr) && o.addrs.len() < MAX_ADDRESSES {
                        o.addrs.push(*addr);
                    }
                }
                o.addrs.sort_by_key(|a| (a.is_ipv6(), *a));
            }
            None => out.push(c.clone()),
        }
    }
    out
}

/// Picks the one tracker `filter` accepts among `candidates`.
pub fn pick(candidates: &[Candidate], filter: &Filter) -> Pick {
    let mut found = matching(candidates, filter);
    match found.len() {
        0 => Pick::None,
        1 => Pick::One(found.remove(0)),
        _ => Pick::Several(found),
    }
}

/// One line per candidate, for the "several trackers" error:
/// `ADDR (tracker ID)`.
pub fn describe(candidates: &[Candidate]) -> String {
    candidates.iter().map(|c| format!("{} (tracker {})", c.addr(), c.id())).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp(b: u8) -> DiscoveryFingerprint {
        DiscoveryFingerprint([b; 16])
    }

    fn id(b: u8) -> PeerId {
        PeerId([b; 16])
    }

    fn props(a: &Announcement) -> Vec<(String, String)> {
        a.txt_properties()
    }

    fn parse_owned(p: &[(String, String)]) -> Result<Announcement, AnnouncementError> {
        Announcement::parse(p.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))))
    }

    fn candidate(b: u8, fingerprint: DiscoveryFingerprint, nameplates: &[u16], ip: [u8; 4]) -> Candidate {
        let a = Announcement::new(fingerprint, id(b), nameplates);
        let p = props(&a);
        Candidate::parse(
            &format!("t{b}.{SERVICE_TYPE}"),
            7373,
            [IpAddr::from(ip)],
            p.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes()))),
        )
        .unwrap()
    }

    #[test]
    fn an_announcement_round_trips() {
        let a = Announcement::new(fp(7), id(3), &[12, 5, 999]);
        assert_eq!(a.nameplates, [5, 12, 999]);
        let p = props(&a);
        assert_eq!(p[0], ("v".to_owned(), "1".to_owned()));
        assert_eq!(p[3], ("inv".to_owned(), "5,12,999".to_owned()));
        assert_eq!(parse_owned(&p).unwrap(), a);
        let none = Announcement::new(fp(7), id(3), &[]);
        assert_eq!(props(&none)[3].1, "");
        assert_eq!(parse_owned(&props(&none)).unwrap(), none);
    }

    #[test]
    fn the_fingerprint_is_derived_not_the_key() {
        let key = [42u8; 32];
        let f = DiscoveryFingerprint::of_key(&key);
        assert_eq!(f, DiscoveryFingerprint::of_key(&key));
        assert_ne!(f, DiscoveryFingerprint::of_key(&[43u8; 32]));
        let text = f.to_string();
        assert_eq!(text.len(), 32);
        assert!(!crate::hex::encode(&key).contains(&text));
        assert_eq!(text.parse::<DiscoveryFingerprint>().unwrap(), f);
        for bad in ["", "00", &text.to_uppercase(), &format!("{text}0"), &text.replace(|_: char| true, "g")] {
            assert_eq!(bad.parse::<DiscoveryFingerprint>(), Err(AnnouncementError::BadFingerprint), "{bad}");
        }
    }

    #[test]
    fn nameplates_are_normalized_and_checked() {
        assert_eq!(normalize_nameplates(&[3, 0, 1000, 3, 2]), (vec![2, 3], true));
        assert_eq!(normalize_nameplates(&[1, 2]), (vec![1, 2], false));
        let many: Vec<u16> = (1..=100).collect();
        assert_eq!(normalize_nameplates(&many).0.len(), MAX_NAMEPLATES);
        assert_eq!(parse_nameplates("").unwrap(), Vec::<u16>::new());
        assert_eq!(parse_nameplates("7,3").unwrap(), [3, 7]);
        for bad in ["0", "1000", "01", "1,,2", "1,1", "a", "-1", " 1", "1,", ",1", "+1"] {
            assert!(parse_nameplates(bad).is_err(), "{bad}");
        }
        let too_many = (1..=33).map(|n| n.to_string()).collect::<Vec<_>>().join(",");
        assert!(parse_nameplates(&too_many).is_err());
    }

    #[test]
    fn bad_announcements_are_typed_errors() {
        let good = props(&Announcement::new(fp(1), id(2), &[4]));
        let with = |k: &str, v: &str| {
            let mut p = good.clone();
            match p.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = v.to_owned(),
                None => p.push((k.to_owned(), v.to_owned())),
            }
            parse_owned(&p)
        };
        assert_eq!(with("v", "2"), Err(AnnouncementError::WrongVersion("2".into())));
        assert_eq!(with("fp", "zz"), Err(AnnouncementError::BadFingerprint));
        assert_eq!(with("id", "nope"), Err(AnnouncementError::BadId));
        assert!(matches!(with("inv", "1,1"), Err(AnnouncementError::BadNameplates(_))));
        assert_eq!(with("fp", &"a".repeat(300)), Err(AnnouncementError::OversizeProperty(303)));
        assert!(with("other", "ignored").is_ok());
        let mut twice = good.clone();
        twice.push(("FP".into(), fp(1).to_string()));
        assert_eq!(parse_owned(&twice), Err(AnnouncementError::DuplicateKey("fp".into())));
        let mut crowd = good.clone();
        crowd.extend((0..20).map(|i| (format!("k{i}"), String::new())));
        assert!(matches!(parse_owned(&crowd), Err(AnnouncementError::TooManyProperties(_))));
        let missing: Vec<_> = good.iter().filter(|(k, _)| k != "fp").cloned().collect();
        assert_eq!(parse_owned(&missing), Err(AnnouncementError::Missing("fp")));
        let not_text = Announcement::parse([("v", Some(&[0xff_u8][..]))]);
        assert_eq!(not_text, Err(AnnouncementError::NotText("v")));
        let no_value = Announcement::parse([("v", None)]);
        assert_eq!(no_value, Err(AnnouncementError::Missing("v")));
    }

    #[test]
    fn a_candidate_needs_a_name_a_port_and_a_dialable_address() {
        let p = props(&Announcement::new(fp(1), id(2), &[]));
        let it = || p.iter().map(|(k, v)| (k.as_str(), Some(v.as_bytes())));
        let lan = IpAddr::from([10, 77, 0, 2]);
        assert!(Candidate::parse("x", 7373, [lan], it()).is_ok());
        assert_eq!(Candidate::parse("", 7373, [lan], it()), Err(AnnouncementError::BadName));
        assert_eq!(Candidate::parse(&"x".repeat(256), 7373, [lan], it()), Err(AnnouncementError::BadName));
        assert_eq!(Candidate::parse("x", 0, [lan], it()), Err(AnnouncementError::BadPort));
        let useless = [IpAddr::from([127, 0, 0, 1]), IpAddr::from([0, 0, 0, 0]), IpAddr::from([224, 0, 0, 251])];
        assert_eq!(Candidate::parse("x", 7373, useless, it()), Err(AnnouncementError::NoAddress));
        let v6: IpAddr = "fe80::1".parse().unwrap();
        let c = Candidate::parse("x", 7373, [v6, lan, lan], it()).unwrap();
        assert_eq!(c.addrs, [SocketAddr::new(lan, 7373), SocketAddr::new(v6, 7373)]);
        let many = (0..100u8).map(|i| IpAddr::from([10, 0, 0, i]));
        assert_eq!(Candidate::parse("x", 7373, many, it()).unwrap().addrs.len(), MAX_ADDRESSES);
    }

    #[test]
    fn picking_by_fingerprint_or_nameplate() {
        let a1 = candidate(1, fp(0xa), &[17], [10, 77, 0, 2]);
        let a1_again = candidate(1, fp(0xa), &[17], [10, 77, 1, 2]);
        let b = candidate(2, fp(0xb), &[5], [10, 77, 0, 3]);
        let a_other = candidate(3, fp(0xa), &[], [10, 77, 0, 4]);
        let all = [a1.clone(), b.clone(), a1_again];
        match pick(&all, &Filter::Fingerprint(fp(0xa))) {
            Pick::One(c) => {
                assert_eq!(c.id(), id(1));
                assert_eq!(c.addrs.len(), 2, "one tracker heard on two addresses is one tracker");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(pick(&all, &Filter::Nameplate(5)), Pick::One(c) if c.id() == id(2)));
        assert_eq!(pick(&all, &Filter::Nameplate(6)), Pick::None);
        assert_eq!(pick(&all, &Filter::Fingerprint(fp(0xc))), Pick::None);
        let two = [a1, b, a_other];
        match pick(&two, &Filter::Fingerprint(fp(0xa))) {
            Pick::Several(list) => {
                assert_eq!(list.len(), 2);
                let text = describe(&list);
                assert!(text.contains("10.77.0.2:7373") && text.contains("10.77.0.4:7373"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_hostile_packet_is_refused_without_panicking() {
        // Random bytes where the TXT record should be, an oversize value, a
        // wrong fingerprint: each is an error, and a wrong fingerprint
        // parses but does not match.
        let garbage: Vec<u8> = (0..=255u8).rev().collect();
        let lossy = String::from_utf8_lossy(&garbage).into_owned();
        assert!(Announcement::parse([(lossy.as_str(), Some(&garbage[..]))]).is_err());
        assert!(Announcement::parse([("v", Some(&b"1"[..])), ("fp", Some(&garbage[..]))]).is_err());
        let huge = vec![b'a'; 70_000];
        assert!(matches!(
            Announcement::parse([("v", Some(&huge[..]))]),
            Err(AnnouncementError::OversizeProperty(70_002))
        ));
        let stranger = candidate(9, fp(0xee), &[1], [10, 77, 0, 9]);
        assert_eq!(pick(&[stranger], &Filter::Fingerprint(fp(0xa))), Pick::None);
    }

    proptest! {
        #[test]
        fn random_properties_never_panic(
            props in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300))),
                0..24,
            ),
            instance in proptest::collection::vec(any::<u8>(), 0..300),
            port in any::<u16>(),
            ips in proptest::collection::vec(any::<[u8; 4]>(), 0..40),
        ) {
            let keys: Vec<String> = props.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
            let iter = || keys.iter().zip(&props).map(|(k, (_, v))| (k.as_str(), v.as_deref()));
            let _ = Announcement::parse(iter());
            let name = String::from_utf8_lossy(&instance).into_owned();
            if let Ok(c) = Candidate::parse(&name, port, ips.iter().map(|ip| IpAddr::from(*ip)), iter()) {
                prop_assert!(!c.addrs.is_empty() && c.addrs.len() <= MAX_ADDRESSES);
                prop_assert!(c.announcement.nameplates.len() <= MAX_NAMEPLATES);
                let _ = pick(&[c], &Filter::Nameplate(1));
            }
        }

        #[test]
        fn announcements_round_trip(
            f in any::<[u8; 16]>(), i in any::<[u8; 16]>(), n in proptest::collection::vec(any::<u16>(), 0..50),
        ) {
            let a = Announcement::new(DiscoveryFingerprint(f), PeerId(i), &n);
            prop_assert_eq!(parse_owned(&a.txt_properties()).unwrap(), a);
        }
    }
}
