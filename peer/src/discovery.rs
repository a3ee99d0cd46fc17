//! Finding a tracker on the LAN: browses DNS-SD over mDNS (`mdns-sd`) for
//! `_dartsync._tcp.local.` and picks the one tracker a [`Filter`] accepts.
//!
//! Owns the peer side's mDNS daemon (one per search, stopped when the
//! search ends) and the rules of a search: which announcements count
//! ([`Candidate::parse`] in [`dartsync_shared::discovery`] checks every
//! one: the network is hostile), when one match is an answer (once it has
//! been the only match for [`SETTLE`], so a second tracker answering a
//! moment later is still seen), and when several matches are an error
//! ([`DiscoveryError::Several`]: the user must pass `--tracker-addr`).
//!
//! Browsing uses non-loopback IPv4 interfaces only. Nothing here knows the
//! tracker client or the folder: `sync::locate` uses [`search`] for a peer
//! without `--tracker-addr`, and `dartsync join` calls [`discover`] with
//! [`Filter::Nameplate`].

use std::time::Duration;

pub use dartsync_shared::discovery::{Candidate, DiscoveryFingerprint, Filter};
use dartsync_shared::discovery::{MAX_CANDIDATES, SERVICE_TYPE, describe, matching};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
use tokio::time::Instant;

/// How long a single match must stay the only one before it is the answer.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// Why no tracker was picked.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The mDNS daemon could not start or stopped.
    #[error("cannot look for the tracker on the LAN (mDNS): {0}")]
    Mdns(String),
    /// Nothing matched in time.
    #[error("{what} was not found on the LAN within {} s", after.as_secs())]
    NotFound {
        /// What was looked for ("tracker of cluster 1a2b3c4d").
        what: String,
        /// How long.
        after: Duration,
    },
    /// Several distinct trackers match.
    #[error("several trackers on the LAN match ({what}): {list}; pass --tracker-addr HOST:PORT to choose one")]
    Several {
        /// What was looked for.
        what: String,
        /// `ADDR (tracker ID)`, comma separated.
        list: String,
        /// The matching trackers.
        candidates: Vec<Candidate>,
    },
}

/// A running browse for `_dartsync._tcp` on the non-loopback IPv4
/// interfaces. Stops its daemon when dropped.
pub struct Browser {
    /// `None` in unit tests, which feed events by hand and must not start
    /// a daemon (it would join multicast groups on real interfaces).
    daemon: Option<ServiceDaemon>,
    events: Events,
    /// What is looked for: other announcements are not kept, so a flood
    /// of strangers cannot crowd out the tracker looked for.
    filter: Filter,
    /// Valid announcements `filter` accepts, at most [`MAX_CANDIDATES`].
    candidates: Vec<Candidate>,
    /// Instances already logged as passed over (at most
    /// [`MAX_CANDIDATES`]; beyond that, silence).
    passed_over: Vec<String>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("filter", &self.filter)
            .field("candidates", &self.candidates)
            .finish_non_exhaustive()
    }
}

/// Where service events come from.
#[derive(Debug)]
enum Events {
    Mdns(mdns_sd::Receiver<ServiceEvent>),
    #[cfg(test)]
    Test(tokio::sync::mpsc::UnboundedReceiver<ServiceEvent>),
}

impl Browser {
    /// Starts the daemon and the browse for what `filter` accepts.
    pub fn start(filter: Filter) -> Result<Browser, DiscoveryError> {
        let mdns = |e: mdns_sd::Error| DiscoveryError::Mdns(e.to_string());
        let daemon = ServiceDaemon::new().map_err(mdns)?;
        daemon.disable_interface(vec![IfKind::IPv6, IfKind::LoopbackV4, IfKind::LoopbackV6]).map_err(mdns)?;
        let events = daemon.browse(SERVICE_TYPE).map_err(mdns)?;
        Ok(Browser::with(Some(daemon), Events::Mdns(events), filter))
    }

    fn with(daemon: Option<ServiceDaemon>, events: Events, filter: Filter) -> Browser {
        Browser { daemon, events, filter, candidates: Vec::new(), passed_over: Vec::new() }
    }

    /// Every valid announcement the filter accepts heard and not
    /// withdrawn, one per instance.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// Waits for the next event that changes [`Browser::candidates`].
    pub async fn changed(&mut self) -> Result<(), DiscoveryError> {
        loop {
            let stopped = || DiscoveryError::Mdns("the mDNS daemon stopped".into());
            let event = match &mut self.events {
                Events::Mdns(rx) => rx.recv_async().await.map_err(|_| stopped())?,
                #[cfg(test)]
                Events::Test(rx) => rx.recv().await.ok_or_else(stopped)?,
            };
            if self.apply(event) {
                return Ok(());
            }
        }
    }

    /// Takes one event in; true if the candidates changed.
    fn apply(&mut self, event: ServiceEvent) -> bool {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let parsed = Candidate::parse(
                    &service.fullname,
                    service.port,
                    service.addresses.iter().map(|a| a.to_ip_addr()),
                    service.txt_properties.iter().map(|p| (p.key(), p.val())),
                );
                match parsed {
                    Ok(candidate) if self.filter.matches(&candidate) => self.insert(candidate),
                    Ok(other) => {
                        self.pass_over(&other);
                        // It may have matched before (an invite closed).
                        let before = self.candidates.len();
                        self.candidates.retain(|c| c.instance != other.instance);
                        before != self.candidates.len()
                    }
                    Err(e) => {
                        let name: String = service.fullname.chars().take(80).collect();
                        tracing::debug!("ignoring the announcement {name:?} heard on the LAN: {e}");
                        false
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let before = self.candidates.len();
                self.candidates.retain(|c| c.instance != fullname);
                before != self.candidates.len()
            }
            _ => false,
        }
    }

    /// Logs (once per instance) why `other` is not kept.
    fn pass_over(&mut self, other: &Candidate) {
        if self.passed_over.contains(&other.instance) || self.passed_over.len() >= MAX_CANDIDATES {
            return;
        }
        self.passed_over.push(other.instance.clone());
        let why = match self.filter {
            Filter::Fingerprint(_) => format!("another cluster ({})", other.announcement.fingerprint.fmt_short()),
            Filter::Nameplate(n) => format!("no open invite {n}"),
        };
        tracing::debug!("passing over the tracker at {} (tracker {}): {why}", other.addr(), other.id());
    }

    fn insert(&mut self, candidate: Candidate) -> bool {
        match self.candidates.iter().position(|c| c.instance == candidate.instance) {
            Some(i) if self.candidates[i] == candidate => false,
            Some(i) => {
                self.candidates[i] = candidate;
                true
            }
            None if self.candidates.len() >= MAX_CANDIDATES => {
                tracing::debug!("ignoring {}: {MAX_CANDIDATES} trackers heard already", candidate.instance);
                false
            }
            None => {
                self.candidates.push(candidate);
                true
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(daemon) = &self.daemon {
            let _ = daemon.stop_browse(SERVICE_TYPE);
            let _ = daemon.shutdown();
        }
    }
}

/// What [`search`] reports about the candidates it hears.
pub trait Judge {
    /// Whether `candidate` (already accepted by the filter) may be picked;
    /// false drops it (the judge says why, in the log).
    fn accept(&mut self, candidate: &Candidate) -> bool;
}

/// Accepts every candidate the filter accepts.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl Judge for AcceptAll {
    fn accept(&mut self, _: &Candidate) -> bool {
        true
    }
}

/// Browses until exactly one tracker that the browser's filter and
/// `judge` accept has been the only one for [`SETTLE`]. `timeout` `None`:
/// looks until found. `Ok(None)`: nothing found before the timeout (a
/// match still settling then gets its [`SETTLE`]).
pub async fn search(
    browser: &mut Browser,
    judge: &mut (dyn Judge + Send),
    timeout: Option<Duration>,
) -> Result<Option<Candidate>, DiscoveryError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut settled_at: Option<Instant> = None;
    loop {
        let found: Vec<Candidate> =
            matching(browser.candidates(), &browser.filter).into_iter().filter(|c| judge.accept(c)).collect();
        match found.len() {
            0 => settled_at = None,
            1 => {
                let at = *settled_at.get_or_insert_with(|| Instant::now() + SETTLE);
                if Instant::now() >= at {
                    return Ok(found.into_iter().next());
                }
            }
            _ => {
                return Err(DiscoveryError::Several {
                    what: browser.filter.to_string(),
                    list: describe(&found),
                    candidates: found,
                });
            }
        }
        // While one match settles, wait for it; else for the deadline.
        let wake = settled_at.or(deadline);
        if settled_at.is_none()
            && let Some(d) = deadline
            && Instant::now() >= d
        {
            return Ok(None);
        }
        match wake {
            Some(at) => {
                tokio::select! {
                    changed = browser.changed() => changed?,
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => browser.changed().await?,
        }
    }
}

/// Finds the one tracker `filter` accepts on the LAN within `timeout`
/// (plus [`SETTLE`] when the match comes late): the entry point of
/// `dartsync join N` (`Filter::Nameplate(N)`), which dials
/// [`Candidate::addr`]. Several trackers matching is an error, and so is
/// none ([`DiscoveryError::NotFound`]).
pub async fn discover(filter: Filter, timeout: Duration) -> Result<Candidate, DiscoveryError> {
    let mut browser = Browser::start(filter)?;
    search(&mut browser, &mut AcceptAll, Some(timeout))
        .await?
        .ok_or_else(|| DiscoveryError::NotFound { what: filter.to_string(), after: timeout })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dartsync_shared::PeerId;
    use dartsync_shared::discovery::Announcement;
    use mdns_sd::ServiceInfo;

    fn resolved(id: u8, fp: u8, ip: &str, nameplates: &[u16]) -> ServiceEvent {
        let a = Announcement::new(DiscoveryFingerprint([fp; 16]), PeerId([id; 16]), nameplates);
        let props = a.txt_properties();
        let info = ServiceInfo::new(SERVICE_TYPE, &format!("t{id}"), "h.local.", ip, 7373, &props[..]).unwrap();
        ServiceEvent::ServiceResolved(Box::new(info.as_resolved_service()))
    }

    const A: Filter = Filter::Fingerprint(DiscoveryFingerprint([0xa; 16]));

    /// A browser fed by hand: no daemon, no network.
    fn offline(filter: Filter) -> (Browser, tokio::sync::mpsc::UnboundedSender<ServiceEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Browser::with(None, Events::Test(rx), filter), tx)
    }

    #[tokio::test]
    async fn hostile_or_foreign_announcements_are_not_kept_and_withdrawn_ones_forgotten() {
        let (mut b, _tx) = offline(A);
        assert!(b.apply(resolved(1, 0xa, "10.77.0.2", &[3])));
        assert!(!b.apply(resolved(1, 0xa, "10.77.0.2", &[3])), "the same announcement again changes nothing");
        assert!(b.apply(resolved(1, 0xa, "10.77.0.2", &[3, 4])), "new nameplates replace the old");
        assert_eq!(b.candidates()[0].announcement.nameplates, [3, 4]);
        // Loopback only, a wrong version, another cluster: not kept.
        assert!(!b.apply(resolved(2, 0xa, "127.0.0.1", &[])));
        let bad = ServiceInfo::new(SERVICE_TYPE, "evil", "h.local.", "10.77.0.9", 7373, &[("v", "9")][..]).unwrap();
        assert!(!b.apply(ServiceEvent::ServiceResolved(Box::new(bad.as_resolved_service()))));
        for i in 10..=250u8 {
            assert!(!b.apply(resolved(i, 0xb, "10.77.0.3", &[])), "a flood of strangers is not kept");
        }
        assert_eq!(b.passed_over.len(), MAX_CANDIDATES, "nor logged without bound");
        assert_eq!(b.candidates().len(), 1);
        let name = b.candidates()[0].instance.clone();
        assert!(b.apply(ServiceEvent::ServiceRemoved(SERVICE_TYPE.into(), name)));
        assert!(b.candidates().is_empty());
    }

    #[tokio::test]
    async fn a_closed_invite_drops_the_candidate() {
        let (mut b, _tx) = offline(Filter::Nameplate(7));
        assert!(b.apply(resolved(1, 0xa, "10.77.0.2", &[7])));
        assert!(b.apply(resolved(1, 0xa, "10.77.0.2", &[])), "invite 7 closed");
        assert!(b.candidates().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tracker_heard_later_is_found() {
        let (mut b, tx) = offline(A);
        tx.send(resolved(2, 0xb, "10.77.0.3", &[])).unwrap();
        tx.send(resolved(1, 0xa, "10.77.0.2", &[])).unwrap();
        let found = search(&mut b, &mut AcceptAll, None).await.unwrap().unwrap();
        assert_eq!(found.id(), PeerId([1; 16]));
        drop(tx);
        b.apply(ServiceEvent::ServiceRemoved(SERVICE_TYPE.into(), found.instance));
        let gone = search(&mut b, &mut AcceptAll, None).await.unwrap_err();
        assert!(matches!(gone, DiscoveryError::Mdns(_)), "{gone}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_match_settles_and_several_are_an_error() {
        let (mut b, _tx) = offline(A);
        b.apply(resolved(1, 0xa, "10.77.0.2", &[5]));
        b.apply(resolved(2, 0xb, "10.77.0.3", &[]));
        let found = search(&mut b, &mut AcceptAll, Some(Duration::from_secs(10))).await.unwrap().unwrap();
        assert_eq!(found.addr().to_string(), "10.77.0.2:7373");
        let (mut by_nameplate, _tx2) = offline(Filter::Nameplate(5));
        by_nameplate.apply(resolved(1, 0xa, "10.77.0.2", &[5]));
        by_nameplate.apply(resolved(2, 0xb, "10.77.0.3", &[6]));
        let found = search(&mut by_nameplate, &mut AcceptAll, Some(Duration::from_secs(10))).await;
        assert_eq!(found.unwrap().unwrap().id(), PeerId([1; 16]));
        let (mut nothing, _tx3) = offline(Filter::Nameplate(9));
        nothing.apply(resolved(1, 0xa, "10.77.0.2", &[5]));
        let none = search(&mut nothing, &mut AcceptAll, Some(Duration::from_millis(10))).await;
        assert!(none.unwrap().is_none());
        b.apply(resolved(3, 0xa, "10.77.0.4", &[]));
        let err = search(&mut b, &mut AcceptAll, Some(Duration::from_secs(10))).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("10.77.0.2:7373") && text.contains("10.77.0.4:7373"), "{text}");
        assert!(text.contains("--tracker-addr"), "{text}");
        // A judge that refuses one of them leaves one.
        struct Only(PeerId);
        impl Judge for Only {
            fn accept(&mut self, c: &Candidate) -> bool {
                c.id() == self.0
            }
        }
        let found = search(&mut b, &mut Only(PeerId([3; 16])), Some(Duration::from_secs(10))).await;
        assert_eq!(found.unwrap().unwrap().addr().to_string(), "10.77.0.4:7373");
    }
}
