//! Simulated peers: each with its own [`Identity`], one real PTP session
//! over the Noise channel ([`channel::connect`] with the cluster key), all
//! in one tokio runtime.
//!
//! A [`SimPeer`] registers (with a device name), waits for `Welcome`, and
//! then runs two tasks: the reader consumes and validates every message
//! (delta pages, heartbeats, device lists), keeping the last `seq` seen
//! and noting when an armed [`Probe`] entry arrives; the writer sends what
//! the load asks for (`Announce` batches, `Report`) and a `KeepAlive` every
//! interval the tracker asked for, each peer at its own phase of the
//! interval. No piece server runs: nobody fetches in this load. A
//! session made with [`Reading::Skim`] reads only the head of a delta page
//! ([`crate::skim`]) unless a probe is armed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use dartsync_shared::channel::{self, ChannelReader};
use dartsync_shared::codec;
use dartsync_shared::key::Identity;
use dartsync_shared::proto::ptp::{PeerMessage, PeerReport, Register, TrackerMessage, Welcome};
use dartsync_shared::{PeerId, RelPath, VersionVector};
use tokio::io::ReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::tracker::Target;
use crate::{LoadError, skim};

/// An entry the load waits for: who received it and when.
#[derive(Debug)]
pub struct Probe {
    armed: AtomicBool,
    target: Mutex<Option<(RelPath, VersionVector)>>,
    hits: Mutex<Option<mpsc::UnboundedSender<(usize, Instant)>>>,
}

impl Probe {
    /// A disarmed probe.
    pub fn new() -> Arc<Probe> {
        Arc::new(Probe { armed: AtomicBool::new(false), target: Mutex::new(None), hits: Mutex::new(None) })
    }

    /// Watches for `version` of `path`; every session that receives it
    /// sends its index and the time on the returned channel.
    pub fn arm(&self, path: RelPath, version: VersionVector) -> mpsc::UnboundedReceiver<(usize, Instant)> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.hits.lock().expect("probe lock") = Some(tx);
        *self.target.lock().expect("probe lock") = Some((path, version));
        self.armed.store(true, Ordering::SeqCst);
        rx
    }

    /// Stops watching.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
        *self.target.lock().expect("probe lock") = None;
        *self.hits.lock().expect("probe lock") = None;
    }

    fn check(&self, peer: usize, at: Instant, delta: &dartsync_shared::proto::ptp::Delta) {
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        let target = self.target.lock().expect("probe lock");
        let Some((path, version)) = target.as_ref() else { return };
        if delta.entries.iter().any(|e| &e.record.path == path && &e.record.version == version)
            && let Some(hits) = self.hits.lock().expect("probe lock").as_ref()
        {
            let _ = hits.send((peer, at));
        }
    }
}

/// How a session's reader treats delta pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reading {
    /// Decode and validate every message whole.
    #[default]
    Whole,
    /// Read only a delta page's head (seq, entry count) while no probe is
    /// armed; every other message whole.
    Skim,
}

/// What a session's reader has seen.
#[derive(Debug, Default)]
pub struct Seen {
    /// `to_seq` of the last delta.
    pub seq: AtomicU64,
    /// Delta entries received.
    pub entries: AtomicU64,
    /// Bytes of the delta frames received (decrypted).
    pub delta_bytes: AtomicU64,
    /// Most holders listed on one entry.
    pub max_holders: AtomicUsize,
    /// Devices online and up to date in the last device list.
    pub devices_up_to_date: AtomicUsize,
    /// Devices online in the last device list.
    pub devices_online: AtomicUsize,
    /// Why the session ended, if it did.
    pub ended: Mutex<Option<String>>,
}

/// What the load asks a session's writer to send.
#[derive(Debug)]
enum Out {
    Send(PeerMessage),
    Close,
}

/// A clonable handle that sends on one peer's session (for tasks that
/// announce on behalf of many peers).
#[derive(Debug, Clone)]
pub struct Sender {
    index: usize,
    out: mpsc::Sender<Out>,
    seen: Arc<Seen>,
}

impl Sender {
    /// Queues a message (waits while two are queued).
    pub async fn send(&self, msg: PeerMessage) -> Result<(), LoadError> {
        self.out.send(Out::Send(msg)).await.map_err(|_| LoadError::Session {
            index: self.index,
            what: self.seen.ended.lock().expect("seen lock").clone().unwrap_or_else(|| "session ended".into()),
        })
    }
}

/// One simulated peer.
#[derive(Debug)]
pub struct SimPeer {
    /// Its index in the fleet.
    pub index: usize,
    /// Its id (the hash of its Noise static key).
    pub id: PeerId,
    /// The tracker's answer to its `Register`.
    pub welcome: Welcome,
    /// What its reader has seen.
    pub seen: Arc<Seen>,
    out: mpsc::Sender<Out>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl SimPeer {
    /// Connects, runs the handshake with a fresh identity, registers as
    /// `sim-NNNNN` and waits for `Welcome`; then starts its reader and
    /// writer. `phase` (0..1) places its keep-alives within the interval.
    pub async fn connect(
        target: &Target,
        index: usize,
        phase: f64,
        probe: Arc<Probe>,
        reading: Reading,
    ) -> Result<SimPeer, LoadError> {
        let identity = Identity::generate();
        let id = identity.peer_id();
        let fail = |what: String| LoadError::Session { index, what };
        let stream = TcpStream::connect(target.addr).await.map_err(|e| fail(format!("connect: {e}")))?;
        stream.set_nodelay(true).map_err(|e| fail(format!("nodelay: {e}")))?;
        let channel =
            channel::connect(stream, &target.key, &identity).await.map_err(|e| fail(format!("handshake: {e}")))?;
        let (mut reader, mut writer) = channel.split();
        // As a real peer's tracker client does.
        writer.set_piece_len(dartsync_shared::channel::TRACKER_PIECE_LEN);
        let port = 20_000 + (index % 40_000) as u16;
        let register = Register::new(id, port, 0, 0, &format!("sim-{index:05}"));
        writer.send(&PeerMessage::Register(register)).await.map_err(|e| fail(format!("register: {e}")))?;
        let welcome = loop {
            match recv(&mut reader).await.map_err(&fail)? {
                TrackerMessage::Welcome(w) => break w,
                TrackerMessage::Refused { reason } => return Err(fail(format!("refused: {reason}"))),
                TrackerMessage::Pending { .. } => return Err(fail("held for approval (admit = approve?)".into())),
                TrackerMessage::Revoked => return Err(fail("revoked".into())),
                _ => continue,
            }
        };
        let seen = Arc::new(Seen::default());
        seen.seq.store(welcome.seq, Ordering::SeqCst);
        let reader = tokio::spawn(read_loop(reader, index, seen.clone(), probe, reading));
        let (out, rx) = mpsc::channel(2);
        let interval = Duration::from_millis(welcome.interval_ms.max(1));
        let first = Instant::now() + interval.mul_f64(phase.clamp(0.0, 1.0));
        let writer = tokio::spawn(write_loop(writer, rx, first, interval, index, seen.clone()));
        Ok(SimPeer { index, id, welcome, seen, out, reader, writer })
    }

    /// Queues a message (waits while two are queued).
    pub async fn send(&self, msg: PeerMessage) -> Result<(), LoadError> {
        self.sender().send(msg).await
    }

    /// A handle that sends on this session.
    pub fn sender(&self) -> Sender {
        Sender { index: self.index, out: self.out.clone(), seen: self.seen.clone() }
    }

    /// Sends a `Report`: up to date at the last seq seen.
    pub async fn report_up_to_date(&self) -> Result<(), LoadError> {
        let seen_seq = self.seen.seq.load(Ordering::SeqCst);
        self.send(PeerMessage::Report(PeerReport { seen_seq, up_to_date: true, ..PeerReport::default() })).await
    }

    /// The last seq seen.
    pub fn seq(&self) -> u64 {
        self.seen.seq.load(Ordering::SeqCst)
    }

    /// Why the session ended, if it did.
    pub fn end_reason(&self) -> Option<String> {
        self.seen.ended.lock().expect("seen lock").clone()
    }

    /// Says `Goodbye` and waits for both tasks.
    pub async fn close(self) {
        let _ = self.out.send(Out::Close).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.writer).await;
        self.reader.abort();
    }
}

/// Longest silence of the tracker a session takes (it sends a heartbeat
/// every interval).
const SILENCE: Duration = Duration::from_secs(60);

/// The next message, decoded and validated; why the session ends if none.
async fn recv(reader: &mut ChannelReader<ReadHalf<TcpStream>>) -> Result<TrackerMessage, String> {
    decode(&recv_frame(reader).await?)
}

/// The next frame; why the session ends if none.
async fn recv_frame(reader: &mut ChannelReader<ReadHalf<TcpStream>>) -> Result<BytesMut, String> {
    tokio::time::timeout(SILENCE, reader.recv_frame())
        .await
        .map_err(|_| "the tracker is silent".to_owned())?
        .map_err(|e| format!("channel: {e}"))?
        .ok_or_else(|| "the tracker closed the connection".to_owned())
}

/// `frame` as a message, decoded with every bound and validated.
fn decode(frame: &[u8]) -> Result<TrackerMessage, String> {
    let msg: TrackerMessage = codec::decode(frame).map_err(|e| format!("channel: {e}"))?;
    msg.validate().map_err(|e| format!("invalid message: {e}"))?;
    Ok(msg)
}

async fn read_loop(
    mut reader: ChannelReader<ReadHalf<TcpStream>>,
    index: usize,
    seen: Arc<Seen>,
    probe: Arc<Probe>,
    reading: Reading,
) {
    let why = loop {
        let frame = match recv_frame(&mut reader).await {
            Ok(frame) => frame,
            Err(why) => break why,
        };
        let at = Instant::now();
        if reading == Reading::Skim
            && !probe.armed.load(Ordering::Relaxed)
            && let Some(head) = skim::delta_head(&frame)
        {
            seen.entries.fetch_add(head.entries, Ordering::Relaxed);
            seen.delta_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
            seen.seq.store(head.to_seq, Ordering::SeqCst);
            continue;
        }
        let msg = match decode(&frame) {
            Ok(msg) => msg,
            Err(why) => break why,
        };
        match msg {
            TrackerMessage::Delta(delta) => {
                probe.check(index, at, &delta);
                let most = delta.entries.iter().map(|e| e.holders.len()).max().unwrap_or(0);
                seen.max_holders.fetch_max(most, Ordering::Relaxed);
                seen.entries.fetch_add(delta.entries.len() as u64, Ordering::Relaxed);
                seen.delta_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
                seen.seq.store(delta.to_seq, Ordering::SeqCst);
            }
            TrackerMessage::Devices { devices } => {
                let current = devices.iter().filter(|d| d.online && d.up_to_date).count();
                seen.devices_up_to_date.store(current, Ordering::SeqCst);
                let online = devices.iter().filter(|d| d.online).count();
                seen.devices_online.store(online, Ordering::SeqCst);
            }
            TrackerMessage::Refused { reason } => break format!("refused: {reason}"),
            TrackerMessage::Revoked => break "revoked".to_owned(),
            // Conflict and brake notices: a real peer shows
            // them; the load only reads them.
            _ => {}
        }
    };
    seen.ended.lock().expect("seen lock").get_or_insert(why);
}

async fn write_loop(
    mut writer: channel::ChannelWriter<tokio::io::WriteHalf<TcpStream>>,
    mut rx: mpsc::Receiver<Out>,
    first: Instant,
    interval: Duration,
    index: usize,
    seen: Arc<Seen>,
) {
    let mut ticker = tokio::time::interval_at(first, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Send(msg)) => {
                    if let Err(e) = writer.send(&msg).await {
                        break Err(format!("send {}: {e}", kind(&msg)));
                    }
                }
                Some(Out::Close) | None => {
                    let _ = writer.send(&PeerMessage::Goodbye).await;
                    let _ = writer.shutdown().await;
                    break Ok(());
                }
            },
            _ = ticker.tick() => {
                if let Err(e) = writer.send(&PeerMessage::KeepAlive).await {
                    break Err(format!("send keep-alive: {e}"));
                }
            }
        }
    };
    if let Err(why) = result {
        seen.ended.lock().expect("seen lock").get_or_insert(format!("peer {index}: {why}"));
    }
}

fn kind(msg: &PeerMessage) -> &'static str {
    match msg {
        PeerMessage::Register(_) => "register",
        PeerMessage::Announce { .. } => "announce",
        PeerMessage::Have { .. } => "have",
        PeerMessage::KeepAlive => "keep-alive",
        PeerMessage::Goodbye => "goodbye",
        PeerMessage::Report(_) => "report",
        PeerMessage::Sources { .. } => "sources",
    }
}
