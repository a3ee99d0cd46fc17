//! Device admission at the protocol level: a tracker with `admit =
//! "approve"` driven by hand-made peers and its control socket (the
//! requests `dartsync tracker devices | admit | revoke` send).

mod common;

use std::time::Duration;

use common::*;
use dartsync_shared::config::AdmitPolicy;
use dartsync_shared::control::{self, CONTROL_SOCKET, ControlError, RequestKind};
use dartsync_shared::key::Identity;
use dartsync_shared::proto::ptp::{PeerMessage, Register, TrackerMessage};

/// Asks the tracker's control socket.
async fn admin(t: &TestTracker, kind: RequestKind) -> Result<serde_json::Value, ControlError> {
    let dir = t.data_dir.clone();
    tokio::task::spawn_blocking(move || control::request(&dir.join(CONTROL_SOCKET), &dir, kind, PATIENCE))
        .await
        .unwrap()
}

/// The state `devices` lists for `id`.
async fn state_of(t: &TestTracker, id: &str) -> Option<String> {
    let answer = admin(t, RequestKind::Devices).await.unwrap();
    assert_eq!(answer["admit"], "approve");
    let devices = answer["devices"].as_array().unwrap();
    devices.iter().find(|d| d["id"] == id).map(|d| d["state"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn pending_devices_get_nothing_until_admitted_and_revoked_ones_are_dropped_and_refused() {
    let t = TestTracker::start_with(Duration::from_millis(300), 16, |c| c.admit = AdmitPolicy::Approve).await;
    let alice = Identity::generate();
    let alice_id = alice.peer_id().to_string();
    let (mut reader, mut writer) = handshake(t.addr, &t.key, &alice).await;
    writer.send(&PeerMessage::Register(Register::new(alice.peer_id(), 4000, 0, 0, "alice"))).await.unwrap();
    assert_eq!(recv(&mut reader).await, TrackerMessage::Pending { interval_ms: 300 });
    assert_eq!(state_of(&t, &alice_id).await.as_deref(), Some("pending"));
    // While pending: `Pending` again each interval, and nothing else.
    for _ in 0..3 {
        assert_eq!(recv(&mut reader).await, TrackerMessage::Pending { interval_ms: 300 });
        writer.send(&PeerMessage::KeepAlive).await.unwrap();
    }

    // Admitted by its name: the same session gets `Welcome`, then the list.
    let done = admin(&t, RequestKind::Admit { device: "alice".into() }).await.unwrap();
    assert_eq!((done["before"].as_str(), done["state"].as_str()), (Some("pending"), Some("admitted")));
    let welcome = loop {
        match recv(&mut reader).await {
            TrackerMessage::Pending { .. } => {}
            TrackerMessage::Welcome(w) => break w,
            other => panic!("expected Welcome, got {other:?}"),
        }
    };
    assert_eq!(welcome.epoch, t.epoch);
    match recv(&mut reader).await {
        TrackerMessage::Devices { devices } => {
            let me = devices.iter().find(|d| d.peer_id == alice.peer_id()).unwrap();
            assert_eq!(me.state, dartsync_shared::device::DeviceState::Admitted);
        }
        other => panic!("expected Devices, got {other:?}"),
    }
    writer.send(&PeerMessage::Announce { records: vec![] }).await.unwrap();

    // A pending device that announces anyway is dropped; nothing it sent
    // reached the table.
    let mallory = Identity::generate();
    let (mut m_reader, mut m_writer) = handshake(t.addr, &t.key, &mallory).await;
    m_writer.send(&PeerMessage::Register(Register::new(mallory.peer_id(), 4001, 0, 0, "mallory"))).await.unwrap();
    assert!(matches!(recv(&mut m_reader).await, TrackerMessage::Pending { .. }));
    let record = file(
        "from-mallory.txt",
        "x",
        dartsync_shared::VersionVector::new().bumped(mallory.peer_id().short()).unwrap(),
        1,
    );
    m_writer.send(&PeerMessage::Announce { records: vec![record] }).await.unwrap();
    let reason = expect_closed(&mut m_reader).await.unwrap_or_default();
    assert!(reason.contains("waiting for approval"), "{reason}");

    // Names two devices share are refused with both ids; unknown ones too.
    let twin = Identity::generate();
    let (mut tw_reader, mut tw_writer) = handshake(t.addr, &t.key, &twin).await;
    tw_writer.send(&PeerMessage::Register(Register::new(twin.peer_id(), 4002, 0, 0, "alice"))).await.unwrap();
    assert!(matches!(recv(&mut tw_reader).await, TrackerMessage::Pending { .. }));
    match admin(&t, RequestKind::Revoke { device: "alice".into() }).await {
        Err(ControlError::Remote(why)) => {
            assert!(
                why.contains("ambiguous") && why.contains(&alice_id) && why.contains(&twin.peer_id().to_string()),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        admin(&t, RequestKind::Admit { device: "nobody".into() }).await,
        Err(ControlError::Remote(why)) if why.contains("no device")
    ));

    // Revoked by an id prefix: told at once, the session closes, and a
    // new registration is refused with the same message.
    let done = admin(&t, RequestKind::Revoke { device: alice_id[..10].to_owned() }).await.unwrap();
    assert_eq!(done["state"], "revoked");
    loop {
        match tokio::time::timeout(PATIENCE, reader.recv::<TrackerMessage>()).await.unwrap() {
            Ok(Some(TrackerMessage::Revoked)) => break,
            Ok(Some(TrackerMessage::Delta(_) | TrackerMessage::Devices { .. })) => {}
            other => panic!("expected Revoked, got {other:?}"),
        }
    }
    assert!(expect_closed(&mut reader).await.is_none());
    let (mut reader, mut writer) = handshake(t.addr, &t.key, &alice).await;
    writer.send(&PeerMessage::Register(Register::new(alice.peer_id(), 4000, 0, 0, "alice"))).await.unwrap();
    assert_eq!(recv(&mut reader).await, TrackerMessage::Revoked);
    assert!(expect_closed(&mut reader).await.is_none());
    assert_eq!(state_of(&t, &alice_id).await.as_deref(), Some("revoked"));
    t.stop().await;
}
