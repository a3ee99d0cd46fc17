//! Announcing the tracker on the LAN: DNS-SD over mDNS (`mdns-sd`),
//! service `_dartsync._tcp.local.`, so a peer started without
//! `--tracker-addr` finds it (see [`dartsync_shared::discovery`] for what
//! the announcement carries and what it reveals).
//!
//! Owns: the decision whether to announce at all ([`scope`]), the mDNS
//! daemon of the tracker (only while announcing) and the [`Nameplates`]
//! handle through which the invite table keeps the announced open invites
//! (`inv=`) current.
//!
//! # Where multicast goes
//! Only where peers could dial the tracker: nothing is announced when
//! discovery is off (`--no-discovery`, `[tracker] discovery = false`) or
//! when the tracker listens on a loopback address (every test on
//! 127.0.0.1). Listening on an unspecified address (`0.0.0.0`, `::`) it
//! announces on every non-loopback IPv4 interface; on one address, only on
//! the interface that carries it. The daemon is created only then, so a
//! tracker that does not announce never joins a multicast group.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dartsync_shared::PeerId;
use dartsync_shared::discovery::{Announcement, DiscoveryFingerprint, SERVICE_TYPE, normalize_nameplates};
use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceInfo};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// How long shutdown waits for the goodbye packets to go out.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// The open invite nameplates the tracker announces (`inv=`). Cheap to
/// clone; setting it while the tracker runs updates the announcement
/// (a no-op when nothing is announced).
#[derive(Debug, Clone)]
pub struct Nameplates {
    tx: Arc<watch::Sender<Vec<u16>>>,
}

impl Default for Nameplates {
    fn default() -> Self {
        Nameplates { tx: Arc::new(watch::Sender::new(Vec::new())) }
    }
}

impl Nameplates {
    /// Replaces the open nameplates. Invalid ones (0, above 999) and
    /// repeats are dropped, the list is sorted, and at most
    /// [`dartsync_shared::discovery::MAX_NAMEPLATES`] (the lowest) are
    /// announced. The announcement is updated only if the list changed.
    pub fn set_nameplates(&self, nameplates: Vec<u16>) {
        let (normal, dropped) = normalize_nameplates(&nameplates);
        if dropped {
            tracing::warn!(asked = ?nameplates, announced = ?normal, "some invite nameplates cannot be announced");
        }
        self.tx.send_if_modified(|current| {
            if *current == normal {
                return false;
            }
            *current = normal;
            true
        });
    }

    /// The nameplates announced now.
    pub fn nameplates(&self) -> Vec<u16> {
        self.tx.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<Vec<u16>> {
        self.tx.subscribe()
    }
}

/// Where (and whether) to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Not at all, and why.
    Off(&'static str),
    /// Every non-loopback IPv4 interface (listening on `0.0.0.0` / `::`).
    AllIpv4,
    /// Only the interface carrying this address.
    Interface(IpAddr),
}

/// Whether a tracker listening on `listen` announces itself, and where.
pub(crate) fn scope(listen: SocketAddr, enabled: bool) -> Scope {
    let ip = listen.ip();
    if !enabled {
        Scope::Off("discovery is turned off (--no-discovery or [tracker] discovery = false)")
    } else if ip.is_loopback() {
        Scope::Off("the tracker listens on a loopback address")
    } else if ip.is_multicast() {
        Scope::Off("the listen address is a multicast address")
    } else if ip.is_unspecified() {
        Scope::AllIpv4
    } else {
        Scope::Interface(ip)
    }
}

/// What the announcer needs to know.
#[derive(Debug, Clone)]
pub(crate) struct AnnounceConfig {
    pub(crate) scope: Scope,
    /// The bound address (its port is announced).
    pub(crate) addr: SocketAddr,
    pub(crate) fingerprint: DiscoveryFingerprint,
    pub(crate) id: PeerId,
}

/// Starts announcing, unless the scope says not to (then logs why, once).
/// The announcement is withdrawn when `cancel` fires.
pub(crate) fn spawn(
    config: AnnounceConfig,
    nameplates: &Nameplates,
    cancel: CancellationToken,
) -> Option<AbortOnDropHandle<()>> {
    if let Scope::Off(why) = config.scope {
        tracing::info!("not announced on the LAN: {why}");
        return None;
    }
    let daemon = match start_daemon(config.scope) {
        Ok(daemon) => daemon,
        Err(e) => {
            tracing::warn!("cannot announce the tracker on the LAN (peers need --tracker-addr): {e}");
            return None;
        }
    };
    let rx = nameplates.subscribe();
    Some(AbortOnDropHandle::new(tokio::spawn(announce(daemon, config, rx, cancel))))
}

/// A daemon restricted to the scope's interfaces (IPv4 only, never
/// loopback).
fn start_daemon(scope: Scope) -> Result<ServiceDaemon, mdns_sd::Error> {
    let daemon = ServiceDaemon::new()?;
    match scope {
        Scope::Interface(ip) => {
            daemon.disable_interface(IfKind::All)?;
            daemon.enable_interface(IfKind::Addr(ip))?;
        }
        Scope::AllIpv4 | Scope::Off(_) => {
            daemon.disable_interface(vec![IfKind::IPv6, IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        }
    }
    Ok(daemon)
}

/// The service record for `nameplates`.
fn service_info(config: &AnnounceConfig, nameplates: &[u16]) -> Result<ServiceInfo, mdns_sd::Error> {
    let announcement = Announcement::new(config.fingerprint, config.id, nameplates);
    let properties = announcement.txt_properties();
    let instance = format!("dartsync-{}", config.id);
    let host = format!("dartsync-{}.local.", config.id);
    let info = match config.scope {
        Scope::Interface(ip) => {
            let mut info = ServiceInfo::new(SERVICE_TYPE, &instance, &host, ip, config.addr.port(), &properties[..])?;
            info.set_interfaces(vec![IfKind::Addr(ip)]);
            info
        }
        Scope::AllIpv4 | Scope::Off(_) => {
            ServiceInfo::new(SERVICE_TYPE, &instance, &host, (), config.addr.port(), &properties[..])?
                .enable_addr_auto()
        }
    };
    Ok(info)
}

/// Registers the service, re-registers it whenever the nameplates change,
/// and withdraws it (goodbye packets) on `cancel`.
async fn announce(
    daemon: ServiceDaemon,
    config: AnnounceConfig,
    mut nameplates: watch::Receiver<Vec<u16>>,
    cancel: CancellationToken,
) {
    let monitor = daemon.monitor().ok();
    let mut fullname = None;
    let mut register = |list: &[u16]| match service_info(&config, list) {
        Ok(info) => {
            fullname = Some(info.get_fullname().to_owned());
            if let Err(e) = daemon.register(info) {
                tracing::warn!("cannot announce the tracker on the LAN: {e}");
            }
        }
        Err(e) => tracing::warn!("cannot build the LAN announcement: {e}"),
    };
    let first = nameplates.borrow_and_update().clone();
    register(&first);
    let where_ = match config.scope {
        Scope::Interface(ip) => format!("the interface of {ip}"),
        _ => "every non-loopback IPv4 interface".to_owned(),
    };
    tracing::info!(
        "announcing the tracker on the LAN ({SERVICE_TYPE} port {}, cluster {}) on {where_}",
        config.addr.port(),
        config.fingerprint.fmt_short()
    );
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = nameplates.changed() => {
                if changed.is_err() {
                    // The handle is gone: keep announcing what we have.
                    cancel.cancelled().await;
                    break;
                }
                let list = nameplates.borrow_and_update().clone();
                tracing::debug!(nameplates = ?list, "updating the LAN announcement");
                register(&list);
            }
            event = async {
                match &monitor {
                    Some(m) => m.recv_async().await.ok(),
                    None => std::future::pending().await,
                }
            } => match event {
                Some(DaemonEvent::Error(e)) => tracing::warn!("LAN announcement: {e}"),
                Some(other) => tracing::debug!("mDNS: {other:?}"),
                None => {
                    tracing::warn!("the mDNS daemon stopped; the tracker is no longer announced on the LAN");
                    cancel.cancelled().await;
                    return;
                }
            },
        }
    }
    if let Some(name) = fullname
        && let Ok(done) = daemon.unregister(&name)
    {
        let _ = tokio::time::timeout(GOODBYE_WAIT, done.recv_async()).await;
    }
    if let Ok(done) = daemon.shutdown() {
        let _ = tokio::time::timeout(GOODBYE_WAIT, done.recv_async()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_or_disabled_never_announces() {
        assert!(matches!(scope(addr("127.0.0.1:0"), true), Scope::Off(_)));
        assert!(matches!(scope(addr("127.3.2.1:7373"), true), Scope::Off(_)));
        assert!(matches!(scope(addr("[::1]:7373"), true), Scope::Off(_)));
        assert!(matches!(scope(addr("0.0.0.0:7373"), false), Scope::Off(_)));
        assert!(matches!(scope(addr("10.0.0.2:7373"), false), Scope::Off(_)));
        assert!(matches!(scope(addr("224.0.0.251:7373"), true), Scope::Off(_)));
    }

    #[test]
    fn unspecified_announces_everywhere_else_on_its_interface() {
        assert_eq!(scope(addr("0.0.0.0:7373"), true), Scope::AllIpv4);
        assert_eq!(scope(addr("[::]:7373"), true), Scope::AllIpv4);
        assert_eq!(scope(addr("10.77.0.2:7373"), true), Scope::Interface("10.77.0.2".parse().unwrap()));
    }

    #[test]
    fn nameplates_are_normalized_and_changes_are_seen() {
        let handle = Nameplates::default();
        let mut rx = handle.subscribe();
        handle.set_nameplates(vec![7, 3, 0, 7, 1000]);
        assert_eq!(handle.nameplates(), [3, 7]);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        handle.clone().set_nameplates(vec![3, 7]);
        assert!(!rx.has_changed().unwrap(), "the same list does not re-announce");
        handle.set_nameplates(Vec::new());
        assert!(rx.has_changed().unwrap());
        assert!(handle.nameplates().is_empty());
    }

    #[test]
    fn the_service_record_carries_the_announcement() {
        let config = AnnounceConfig {
            scope: Scope::Interface("10.77.0.2".parse().unwrap()),
            addr: addr("10.77.0.2:7373"),
            fingerprint: DiscoveryFingerprint([1; 16]),
            id: PeerId([2; 16]),
        };
        let info = service_info(&config, &[9, 4]).unwrap();
        assert_eq!(info.get_property_val_str("inv"), Some("4,9"));
        assert_eq!(info.get_property_val_str("v"), Some("1"));
        assert_eq!(info.get_property_val_str("fp"), Some(DiscoveryFingerprint([1; 16]).to_string().as_str()));
        assert!(info.get_fullname().ends_with(SERVICE_TYPE));
        let resolved = info.as_resolved_service();
        let props = resolved.txt_properties.iter().map(|p| (p.key(), p.val()));
        let candidate = dartsync_shared::discovery::Candidate::parse(
            &resolved.fullname,
            resolved.port,
            resolved.addresses.iter().map(|a| a.to_ip_addr()),
            props,
        )
        .unwrap();
        assert_eq!(candidate.announcement.nameplates, [4, 9]);
        assert_eq!(candidate.addr(), addr("10.77.0.2:7373"));
    }
}
