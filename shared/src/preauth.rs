//! Pre-authentication limits for a listener (the tracker's and every piece
//! server's): how many connections may be in the Noise handshake at once,
//! and how what goes wrong with them is logged.
//!
//! # Why
//! A connection costs a slot from `accept` until its handshake ends, and
//! anyone on the LAN can open one without the cluster key. So connections
//! still in the handshake get a small pool of their own, separate from the
//! listener's authenticated cap (tracker sessions, piece-server
//! connections), which is taken only after the handshake succeeds: a flood
//! of idle or bogus connections can fill this pool, never the other one.
//!
//! # The pool
//! [`PreAuthLimiter::admit`] is called right after `accept`. A connection is
//! admitted while fewer than `per_source` connections of its source (an
//! IPv4 address, or an IPv6 /64) and fewer than `total` in all are in the
//! handshake. Beyond that, it may **displace** an admitted connection that
//! has not yet sent an authentic first handshake message (see
//! [`crate::channel::accept_with`]): of the same source when that source's
//! share is full, of any source when the total is. Otherwise it is refused,
//! and the caller closes it at once, without a task or a handshake.
//!
//! Who may displace whom: a member sends its first message right after
//! connecting. A newcomer whose first bytes have arrived (*eager*) may
//! displace at once an entry that had none when it was admitted, and any
//! other after `idle_grace`; a newcomer with nothing yet may displace an
//! entry only after `idle_grace`. When the pool is full, a newcomer with
//! nothing yet is not refused at once: it waits, without a task, in a small
//! waiting room ([`WAITING_ROOM`] connections, the oldest dropped first)
//! for at most [`WAIT_FOR_BYTES`]; the accept loop looks at the waiting
//! connections every [`SWEEP_EVERY`] ([`PreAuthLimiter::next_sweep`],
//! [`PreAuthLimiter::sweep`]) and admits those whose bytes have come as
//! eager. Idle connections from a flood thus cannot keep a member out, even
//! from the same address, and the grace bounds how fast a flood can churn
//! the pool.
//!
//! A flood that sends bytes and stalls is as eager as a member, so a member
//! of the same source then competes for places that free up (connections
//! without the key that send a complete first message fail at once and
//! free theirs); other sources are unaffected thanks to the per-source
//! share.
//!
//! [`PreAuthLimiter::handshake`] runs the responder handshake holding the
//! permit (so the pool counts the connection until the handshake ends) and
//! stops at once if the connection is displaced. The channel's deadlines
//! apply: [`crate::channel::FIRST_MESSAGE_TIMEOUT`] for the first message,
//! [`crate::channel::HANDSHAKE_TIMEOUT`] for the whole handshake.
//!
//! # Logging
//! Never a line per connection. Refusals, displacements, timeouts and
//! failed handshakes are counted per source; the first of a source in a
//! [`REPORT_EVERY`] period is one `warn` line (with the first reason), the
//! rest are counted, and [`PreAuthLimiter::report`], which the accept loop
//! calls every [`REPORT_EVERY`], logs one summary line per source (at most
//! [`MAX_SUMMARY_SOURCES`], then one line for the rest), e.g.
//! `tracker: refused 1,934 unauthenticated connections from 127.0.0.1 in
//! the last minute (...)`. At most [`MAX_TRACKED_SOURCES`] sources are
//! counted one by one; more are counted together.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::channel::{self, ChannelError, SecureChannel};
use crate::human::thousands;
use crate::key::{ClusterKey, Identity};

/// Default [`PreAuthConfig::total`]: connections in the handshake at once.
pub const DEFAULT_TOTAL: usize = 64;

/// Default [`PreAuthConfig::per_source`]: connections of one source in the
/// handshake at once.
pub const DEFAULT_PER_SOURCE: usize = 8;

/// Default [`PreAuthConfig::idle_grace`]: how long an admitted connection
/// may stay idle before a newcomer may displace it.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_millis(500);

/// How often the accept loop should call [`PreAuthLimiter::report`]; also
/// the period of the one-warn-per-source rule.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Sources counted one by one per period; more are counted together.
pub const MAX_TRACKED_SOURCES: usize = 256;

/// Summary lines with a source of their own per report; the rest share one.
pub const MAX_SUMMARY_SOURCES: usize = 8;

/// Connections waiting for their first bytes while the pool is full.
pub const WAITING_ROOM: usize = 128;

/// How long a connection may wait for its first bytes in the waiting room.
pub const WAIT_FOR_BYTES: Duration = Duration::from_millis(60);

/// How often the waiting room is looked at while it holds connections.
pub const SWEEP_EVERY: Duration = Duration::from_millis(20);

/// The first look at a connection that has just started waiting.
const FIRST_LOOK: Duration = Duration::from_millis(5);

/// The limits of one listener's pre-authentication pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreAuthConfig {
    /// Connections in the handshake at once, from all sources.
    pub total: usize,
    /// Connections in the handshake at once from one source.
    pub per_source: usize,
    /// An admitted connection idle for this long may be displaced.
    pub idle_grace: Duration,
}

impl Default for PreAuthConfig {
    fn default() -> Self {
        PreAuthConfig { total: DEFAULT_TOTAL, per_source: DEFAULT_PER_SOURCE, idle_grace: DEFAULT_IDLE_GRACE }
    }
}

/// Where connections come from, for the per-source limit and the counts:
/// an IPv4 address (IPv4-mapped IPv6 included), or an IPv6 /64 (one host
/// can use a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a connection from `ip`.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Counts of what went wrong with unauthenticated connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    /// Closed at once: the pool was full and nothing could be displaced.
    pub refused: u64,
    /// Closed while idle to make room for a newer connection.
    pub displaced: u64,
    /// No first message within the first-message deadline, or no complete
    /// handshake within the handshake deadline.
    pub timed_out: u64,
    /// The handshake failed: wrong cluster key, another protocol or
    /// version, garbage, a close or reset half-way.
    pub failed: u64,
}

impl FaultCounts {
    /// Every connection counted.
    pub fn total(&self) -> u64 {
        self.refused + self.displaced + self.timed_out + self.failed
    }

    fn add(&mut self, fault: Fault) {
        let n = match fault {
            Fault::Refused => &mut self.refused,
            Fault::Displaced => &mut self.displaced,
            Fault::TimedOut => &mut self.timed_out,
            Fault::Failed => &mut self.failed,
        };
        *n += 1;
    }

    fn merge(&mut self, other: &FaultCounts) {
        self.refused += other.refused;
        self.displaced += other.displaced;
        self.timed_out += other.timed_out;
        self.failed += other.failed;
    }

    /// "1,900 over the limits, 26 displaced while idle": the non-zero parts.
    fn parts(&self) -> String {
        let parts = [
            (self.refused, "over the pre-authentication limits"),
            (self.displaced, "displaced while idle"),
            (self.timed_out, "without a handshake in time"),
            (self.failed, "failed handshakes"),
        ];
        parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{} {what}", thousands(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One thing that went wrong with one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Refused,
    Displaced,
    TimedOut,
    Failed,
}

/// Why [`PreAuthLimiter::handshake`] gave up on a connection. Already
/// counted and (rate-limited) logged: the caller just drops it.
#[derive(Debug, thiserror::Error)]
pub enum PreAuthError {
    /// A newer connection took its place while it was idle.
    #[error("displaced by a newer connection while idle")]
    Displaced,
    /// The handshake failed.
    #[error(transparent)]
    Handshake(ChannelError),
}

/// The pre-authentication pool of one listener and its fault counts.
/// Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct PreAuthLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Names the listener in log lines ("tracker", "piece server").
    listener: &'static str,
    config: PreAuthConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pool: Pool,
    tally: Tally,
    /// Connections waiting for their first bytes, oldest first. Plain std
    /// sockets (non-blocking, not registered with the runtime).
    waiting: VecDeque<Waiting>,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Waiting {
    stream: std::net::TcpStream,
    addr: SocketAddr,
    since: Instant,
}

/// What a look at a socket's receive queue found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peek {
    /// Bytes are waiting.
    Bytes,
    /// Nothing yet.
    Nothing,
    /// The client closed, or the socket failed.
    Gone,
}

/// Looks at `stream`'s receive queue without reading or waiting.
fn peek(stream: &std::net::TcpStream) -> Peek {
    match stream.peek(&mut [0u8; 1]) {
        Ok(0) => Peek::Gone,
        Ok(_) => Peek::Bytes,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Peek::Nothing,
        Err(_) => Peek::Gone,
    }
}

/// The connections in the handshake.
#[derive(Debug, Default)]
struct Pool {
    next_id: u64,
    /// By admission order: the first is the oldest.
    entries: BTreeMap<u64, Entry>,
    per_source: HashMap<Source, usize>,
}

#[derive(Debug)]
struct Entry {
    source: Source,
    admitted: Instant,
    /// Had bytes waiting when admitted.
    eager: bool,
    /// Sent an authentic first message: never displaced.
    busy: bool,
    displace: CancellationToken,
}

impl Pool {
    fn count(&self, source: Source) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }

    fn insert(&mut self, source: Source, eager: bool, now: Instant) -> (u64, CancellationToken) {
        let id = self.next_id;
        self.next_id += 1;
        let displace = CancellationToken::new();
        self.entries.insert(id, Entry { source, admitted: now, eager, busy: false, displace: displace.clone() });
        *self.per_source.entry(source).or_insert(0) += 1;
        (id, displace)
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }

    /// The entry a newcomer (`eager` if its bytes were waiting) may
    /// displace, of `source` if given: not busy, and admitted at least
    /// `grace` ago unless the newcomer is eager and the entry was not.
    /// Entries that were not eager go first, then the oldest.
    fn victim(&self, source: Option<Source>, eager: bool, now: Instant, grace: Duration) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.busy && source.is_none_or(|s| s == e.source))
            .filter(|(_, e)| (eager && !e.eager) || now.saturating_duration_since(e.admitted) >= grace)
            .min_by_key(|(id, e)| (e.eager, **id))
            .map(|(id, _)| *id)
    }
}

/// Fault counts of the current period, per source.
#[derive(Debug, Default)]
struct Tally {
    sources: HashMap<Source, SourceTally>,
    /// Sources beyond [`MAX_TRACKED_SOURCES`], together.
    others: SourceTally,
    /// Everything since the start, for tests and status.
    lifetime: FaultCounts,
}

#[derive(Debug, Default)]
struct SourceTally {
    counts: FaultCounts,
    /// When this source last got its own warn line.
    warned: Option<Instant>,
}

impl Tally {
    /// Counts `fault` of `source`; true if it deserves a warn line (the
    /// first of its source, or of the untracked rest, in a period).
    fn note(&mut self, source: Source, fault: Fault, now: Instant) -> bool {
        self.lifetime.add(fault);
        let tracked = self.sources.len() < MAX_TRACKED_SOURCES || self.sources.contains_key(&source);
        let tally = if tracked { self.sources.entry(source).or_default() } else { &mut self.others };
        tally.counts.add(fault);
        if tally.warned.is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY) {
            tally.warned = Some(now);
            true
        } else {
            false
        }
    }

    /// The counts of the period that ends now, biggest first (`None`: the
    /// untracked rest); starts a new period. Sources quiet for a whole
    /// period are forgotten.
    fn take(&mut self, now: Instant) -> Vec<(Option<Source>, FaultCounts)> {
        let mut out: Vec<(Option<Source>, FaultCounts)> = Vec::new();
        for (source, tally) in &mut self.sources {
            if tally.counts.total() > 0 {
                out.push((Some(*source), std::mem::take(&mut tally.counts)));
            }
        }
        if self.others.counts.total() > 0 {
            out.push((None, std::mem::take(&mut self.others.counts)));
        }
        self.sources.retain(|_, t| t.warned.is_some_and(|w| now.saturating_duration_since(w) < REPORT_EVERY));
        out.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(&b.0)));
        out
    }
}

/// A connection's place in the pool; released on drop.
#[derive(Debug)]
pub struct PreAuthPermit {
    inner: Arc<Inner>,
    id: u64,
    addr: SocketAddr,
    displace: CancellationToken,
}

impl PreAuthPermit {
    /// Resolves when a newcomer displaced this connection (it sent nothing
    /// authentic in time): the caller closes it.
    pub fn displaced(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.displace.cancelled()
    }

    /// The connection sent an authentic first message (of a handshake this
    /// module does not run itself, such as a join): it may no longer be
    /// displaced.
    pub fn mark_authentic(&self) {
        self.first_message_ok();
    }

    /// The connection sent an authentic first message: it may no longer be
    /// displaced.
    fn first_message_ok(&self) {
        if let Some(entry) = self.inner.lock().pool.entries.get_mut(&self.id) {
            entry.busy = true;
        }
    }
}

impl Drop for PreAuthPermit {
    fn drop(&mut self) {
        // Gone already if displaced.
        self.inner.lock().pool.remove(self.id);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (plain counters).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PreAuthLimiter {
    /// A pool for the listener named `listener` in log lines.
    pub fn new(listener: &'static str, config: PreAuthConfig) -> Self {
        let config = PreAuthConfig { total: config.total.max(1), per_source: config.per_source.max(1), ..config };
        PreAuthLimiter { inner: Arc::new(Inner { listener, config, state: Mutex::new(State::default()) }) }
    }

    /// The limits in force.
    pub fn config(&self) -> PreAuthConfig {
        self.inner.config
    }

    /// Admits a TCP connection just accepted from `addr` (`Some`: run
    /// [`Self::handshake`] on it), or keeps it in the waiting room, or
    /// refuses it (closed at once). Counted and logged as the module says.
    /// Only when the pool has no room does it look (without waiting)
    /// whether the client's first bytes are already there.
    pub fn admit(&self, stream: TcpStream, addr: SocketAddr) -> Option<(TcpStream, PreAuthPermit)> {
        let now = Instant::now();
        if self.has_room(addr) {
            return self.admit_logged(addr, false, true, now).map(|permit| (stream, permit));
        }
        // A fresh tokio stream knows no readiness yet: ask the socket
        // itself (`into_std` keeps it non-blocking).
        let std = stream.into_std().ok()?;
        match peek(&std) {
            Peek::Gone => None,
            Peek::Bytes => {
                let permit = self.admit_logged(addr, true, true, now)?;
                Some((TcpStream::from_std(std).ok()?, permit))
            }
            Peek::Nothing => match self.admit_logged(addr, false, false, now) {
                Some(permit) => Some((TcpStream::from_std(std).ok()?, permit)),
                None => {
                    self.wait(std, addr, now);
                    None
                }
            },
        }
    }

    /// [`Self::admit`] for any stream from `addr`; `eager` tells whether
    /// its first bytes were already waiting. `None`: refused.
    pub fn admit_addr(&self, addr: SocketAddr, eager: bool) -> Option<PreAuthPermit> {
        self.admit_logged(addr, eager, true, Instant::now())
    }

    fn admit_logged(&self, addr: SocketAddr, eager: bool, last_chance: bool, now: Instant) -> Option<PreAuthPermit> {
        let (permit, lines) = self.admit_at(addr, eager, last_chance, now);
        for line in lines {
            tracing::warn!("{line}");
        }
        permit
    }

    /// Puts a connection with nothing to read yet in the waiting room,
    /// dropping the oldest waiting one if it is full.
    fn wait(&self, stream: std::net::TcpStream, addr: SocketAddr, now: Instant) {
        let mut state = self.inner.lock();
        state.waiting.push_back(Waiting { stream, addr, since: now });
        let dropped = if state.waiting.len() > WAITING_ROOM { state.waiting.pop_front() } else { None };
        drop(state);
        if let Some(old) = dropped {
            self.refused(old.addr, now);
        }
    }

    /// When the accept loop should call [`Self::sweep`]; `None` while the
    /// waiting room is empty.
    pub fn next_sweep(&self) -> Option<Instant> {
        let state = self.inner.lock();
        let oldest = state.waiting.front()?;
        let first_look = oldest.since + FIRST_LOOK;
        Some(state.last_sweep.map_or(first_look, |last| (last + SWEEP_EVERY).max(first_look)))
    }

    /// Looks at the waiting room: connections whose first bytes have come
    /// are admitted as eager (returned, to run [`Self::handshake`] on),
    /// those that waited [`WAIT_FOR_BYTES`] in vain or closed are dropped.
    /// Call from within the runtime.
    pub fn sweep(&self) -> Vec<(TcpStream, SocketAddr, PreAuthPermit)> {
        let now = Instant::now();
        let waiting = {
            let mut state = self.inner.lock();
            state.last_sweep = Some(now);
            std::mem::take(&mut state.waiting)
        };
        let mut admitted = Vec::new();
        let mut still = VecDeque::new();
        for w in waiting {
            match peek(&w.stream) {
                Peek::Bytes => {
                    if let Some(permit) = self.admit_logged(w.addr, true, true, now)
                        && let Ok(stream) = TcpStream::from_std(w.stream)
                    {
                        admitted.push((stream, w.addr, permit));
                    }
                }
                Peek::Nothing if now.saturating_duration_since(w.since) < WAIT_FOR_BYTES => still.push_back(w),
                Peek::Nothing | Peek::Gone => self.refused(w.addr, now),
            }
        }
        let mut state = self.inner.lock();
        // Newcomers that arrived meanwhile go after the older ones.
        still.append(&mut state.waiting);
        let excess = still.len().saturating_sub(WAITING_ROOM);
        let dropped: Vec<Waiting> = still.drain(..excess).collect();
        state.waiting = still;
        drop(state);
        for old in dropped {
            self.refused(old.addr, now);
        }
        admitted
    }

    /// Connections in the waiting room now.
    pub fn waiting(&self) -> usize {
        self.inner.lock().waiting.len()
    }

    /// Counts (and, rate-limited, logs) a refused connection from `addr`.
    fn refused(&self, addr: SocketAddr, now: Instant) {
        let source = Source::of(addr.ip());
        let mut state = self.inner.lock();
        if state.tally.note(source, Fault::Refused, now) {
            let line = self.refusal_line(source, &state.pool);
            drop(state);
            tracing::warn!("{line}");
        }
    }

    fn refusal_line(&self, source: Source, pool: &Pool) -> String {
        let PreAuthConfig { total, per_source, .. } = self.inner.config;
        format!(
            "{}: refusing unauthenticated connections from {source}: {} from it and {} in all are in the \
             handshake (limits {per_source} and {total}); further refusals are counted and summarized every {}s",
            self.inner.listener,
            pool.count(source),
            pool.entries.len(),
            REPORT_EVERY.as_secs()
        )
    }

    /// Whether a connection from `addr` would be admitted without
    /// displacing anyone.
    fn has_room(&self, addr: SocketAddr) -> bool {
        let PreAuthConfig { total, per_source, .. } = self.inner.config;
        let state = self.inner.lock();
        state.pool.entries.len() < total && state.pool.count(Source::of(addr.ip())) < per_source
    }

    /// Places a connection from `addr` at `now` (displacing another if it
    /// may), or refuses it: counted only if this is its `last_chance`.
    /// Returns the lines to log.
    fn admit_at(
        &self,
        addr: SocketAddr,
        eager: bool,
        last_chance: bool,
        now: Instant,
    ) -> (Option<PreAuthPermit>, Vec<String>) {
        let source = Source::of(addr.ip());
        let PreAuthConfig { total, per_source, idle_grace } = self.inner.config;
        let listener = self.inner.listener;
        let mut lines = Vec::new();
        let mut state = self.inner.lock();
        let State { pool, tally, .. } = &mut *state;
        let source_full = pool.count(source) >= per_source;
        if source_full || pool.entries.len() >= total {
            let victim = pool.victim(source_full.then_some(source), eager, now, idle_grace);
            match victim.and_then(|id| pool.remove(id)) {
                Some(entry) => {
                    entry.displace.cancel();
                    if tally.note(entry.source, Fault::Displaced, now) {
                        lines.push(format!(
                            "{listener}: closing idle unauthenticated connections from {} to make room \
                             (at most {per_source} per source and {total} in all may be in the handshake); \
                             further ones from {} are counted and summarized every {}s",
                            entry.source,
                            entry.source,
                            REPORT_EVERY.as_secs()
                        ));
                    }
                }
                None => {
                    if last_chance && tally.note(source, Fault::Refused, now) {
                        lines.push(self.refusal_line(source, pool));
                    }
                    return (None, lines);
                }
            }
        }
        let (id, displace) = pool.insert(source, eager, now);
        drop(state);
        (Some(PreAuthPermit { inner: self.inner.clone(), id, addr, displace }), lines)
    }

    /// Runs the responder handshake on `stream` while holding `permit` (see
    /// [`crate::channel::accept_with`]); the permit is released when it
    /// ends, before the caller takes its authenticated slot. A failure is
    /// already counted and logged.
    pub async fn handshake<S>(
        &self,
        permit: PreAuthPermit,
        stream: S,
        key: &ClusterKey,
        identity: &Identity,
    ) -> Result<SecureChannel<S>, PreAuthError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = tokio::select! {
            biased;
            () = permit.displace.cancelled() => Err(PreAuthError::Displaced),
            r = channel::accept_with(stream, key, identity, || permit.first_message_ok()) => {
                r.map_err(PreAuthError::Handshake)
            }
        };
        let addr = permit.addr;
        drop(permit);
        if let Err(PreAuthError::Handshake(e)) = &result {
            self.failed(addr, e);
        }
        result
    }

    /// The connection holding `permit` sent nothing by the first-message
    /// deadline (its caller waited for it): counted and logged like a
    /// handshake that timed out, and its place released.
    pub fn silent(&self, permit: PreAuthPermit) {
        let addr = permit.addr;
        drop(permit);
        self.failed(addr, &ChannelError::NoFirstMessage(channel::FIRST_MESSAGE_TIMEOUT));
    }

    /// Counts and (rate-limited) logs a failed handshake with `addr`.
    fn failed(&self, addr: SocketAddr, error: &ChannelError) {
        let fault = match error {
            ChannelError::NoFirstMessage(_) | ChannelError::HandshakeTimeout(_) => Fault::TimedOut,
            _ => Fault::Failed,
        };
        let source = Source::of(addr.ip());
        if self.inner.lock().tally.note(source, fault, Instant::now()) {
            tracing::warn!(
                "{}: handshake with {addr} failed: {error}; further failures from {source} are counted and \
                 summarized every {}s",
                self.inner.listener,
                REPORT_EVERY.as_secs()
            );
        }
    }

    /// Logs the summary of the period that ends now (nothing if it was
    /// quiet) and starts a new one. Call every [`REPORT_EVERY`].
    pub fn report(&self) {
        for line in self.report_at(Instant::now()) {
            tracing::warn!("{line}");
        }
    }

    /// [`Self::report`] at `now`, returning the lines to log.
    fn report_at(&self, now: Instant) -> Vec<String> {
        let counts = self.inner.lock().tally.take(now);
        let listener = self.inner.listener;
        let mut lines = Vec::new();
        let mut rest = FaultCounts::default();
        for (source, c) in &counts {
            match source {
                Some(source) if lines.len() < MAX_SUMMARY_SOURCES => lines.push(format!(
                    "{listener}: refused {} unauthenticated connections from {source} in the last minute ({})",
                    thousands(c.total()),
                    c.parts()
                )),
                _ => rest.merge(c),
            }
        }
        if rest.total() > 0 {
            lines.push(format!(
                "{listener}: refused {} unauthenticated connections from other sources in the last minute ({})",
                thousands(rest.total()),
                rest.parts()
            ));
        }
        lines
    }

    /// Connections in the handshake now.
    pub fn in_handshake(&self) -> usize {
        self.inner.lock().pool.entries.len()
    }

    /// Everything counted since the start.
    pub fn lifetime(&self) -> FaultCounts {
        self.inner.lock().tally.lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn limiter(total: usize, per_source: usize) -> PreAuthLimiter {
        PreAuthLimiter::new("test", PreAuthConfig { total, per_source, idle_grace: Duration::from_millis(500) })
    }

    #[test]
    fn sources_are_v4_addresses_and_v6_slash_64s() {
        assert_eq!(Source::of("10.0.0.1".parse().unwrap()).to_string(), "10.0.0.1");
        assert_eq!(Source::of("::ffff:10.0.0.1".parse().unwrap()), Source::of("10.0.0.1".parse().unwrap()));
        let a = Source::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        assert_eq!(a, Source::of("2001:db8:1:2:bbbb::7".parse().unwrap()));
        assert_ne!(a, Source::of("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1934), "1,934");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn per_source_and_total_limits_refuse_when_nothing_is_idle_long_enough() {
        let l = limiter(3, 2);
        let t0 = Instant::now();
        let (a1, _) = l.admit_at(addr("10.0.0.1:1"), false, true, t0);
        let (a2, _) = l.admit_at(addr("10.0.0.1:2"), false, true, t0);
        let (a3, lines) = l.admit_at(addr("10.0.0.1:3"), false, true, t0);
        assert!(a1.is_some() && a2.is_some());
        assert!(a3.is_none(), "a third from one source");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("refusing unauthenticated connections from 10.0.0.1"), "{lines:?}");
        // Another source still gets in, until the total is reached.
        let (b1, _) = l.admit_at(addr("10.0.0.2:1"), false, true, t0);
        assert!(b1.is_some());
        let (c1, _) = l.admit_at(addr("10.0.0.3:1"), false, true, t0);
        assert!(c1.is_none(), "beyond the total");
        assert_eq!(l.in_handshake(), 3);
        // A released permit frees its place.
        drop(a1);
        assert_eq!(l.in_handshake(), 2);
        assert!(l.admit_at(addr("10.0.0.3:1"), false, true, t0).0.is_some());
        assert_eq!(l.lifetime(), FaultCounts { refused: 2, ..Default::default() });
    }

    #[test]
    fn an_idle_connection_is_displaced_after_the_grace_but_a_busy_one_never() {
        let l = limiter(64, 2);
        let t0 = Instant::now();
        let (a1, _) = l.admit_at(addr("10.0.0.1:1"), false, true, t0);
        let (a2, _) = l.admit_at(addr("10.0.0.1:2"), false, true, t0 + Duration::from_millis(100));
        let (a1, a2) = (a1.unwrap(), a2.unwrap());
        // Within the grace: refused.
        let (refused, lines) = l.admit_at(addr("10.0.0.1:3"), false, true, t0 + Duration::from_millis(400));
        assert!(refused.is_none());
        assert!(lines[0].contains("refusing unauthenticated connections from 10.0.0.1"), "{lines:?}");
        // After it: the oldest idle one (a1) makes room, without another
        // warn line for this source in this period.
        let (a3, lines) = l.admit_at(addr("10.0.0.1:3"), false, true, t0 + Duration::from_millis(600));
        let a3 = a3.expect("displaced the idle one");
        assert!(a1.displace.is_cancelled() && !a2.displace.is_cancelled());
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(l.in_handshake(), 2);
        drop(a1); // Its place is gone already: nothing changes.
        assert_eq!(l.in_handshake(), 2);
        // A busy (authentic first message) connection is never displaced.
        a2.first_message_ok();
        a3.first_message_ok();
        assert!(l.admit_at(addr("10.0.0.1:4"), false, true, t0 + Duration::from_secs(9)).0.is_none());
        assert!(!a2.displace.is_cancelled() && !a3.displace.is_cancelled());
        assert_eq!(l.lifetime(), FaultCounts { refused: 2, displaced: 1, ..Default::default() });
    }

    #[test]
    fn an_eager_newcomer_displaces_an_idle_entry_at_once_but_a_young_eager_one_only_after_the_grace() {
        let l = limiter(64, 2);
        let t0 = Instant::now();
        let idle = l.admit_at(addr("10.0.0.1:1"), false, true, t0).0.unwrap();
        let eager = l.admit_at(addr("10.0.0.1:2"), true, true, t0).0.unwrap();
        // A member whose first bytes were waiting takes the idle one's place.
        let member = l.admit_at(addr("10.0.0.1:3"), true, true, t0).0.expect("displaces the idle entry at once");
        assert!(idle.displace.is_cancelled() && !eager.displace.is_cancelled());
        // Eager entries are safe within the grace...
        assert!(l.admit_at(addr("10.0.0.1:4"), true, true, t0 + Duration::from_millis(100)).0.is_none());
        // ...and displaced after it, the oldest first.
        let late = l.admit_at(addr("10.0.0.1:5"), true, true, t0 + Duration::from_millis(600)).0;
        assert!(late.is_some());
        assert!(eager.displace.is_cancelled() && !member.displace.is_cancelled());
    }

    #[tokio::test]
    async fn a_full_pool_keeps_silent_newcomers_waiting_and_admits_them_when_their_bytes_come() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let l = PreAuthLimiter::new(
            "test",
            PreAuthConfig { total: 64, per_source: 1, idle_grace: Duration::from_secs(3600) },
        );
        // A: silent, admitted while there is room.
        let _a = TcpStream::connect(at).await.unwrap();
        let (stream, from) = listener.accept().await.unwrap();
        let (_, a) = l.admit(stream, from).expect("room for the first");
        // B: silent too, and the pool is full: it waits.
        let mut b = TcpStream::connect(at).await.unwrap();
        let (stream, from) = listener.accept().await.unwrap();
        assert!(l.admit(stream, from).is_none());
        assert_eq!(l.waiting(), 1);
        assert!(l.next_sweep().is_some());
        // B's first bytes come: the next look admits it, displacing A.
        b.write_all(&[0, 58]).await.unwrap();
        let mut admitted = Vec::new();
        crate::test_util::eventually_async(Duration::from_secs(10), "B to be admitted", async || {
            admitted.extend(l.sweep());
            !admitted.is_empty()
        })
        .await;
        let (mut b_server, _, b_permit) = admitted.pop().unwrap();
        assert!(a.displace.is_cancelled() && !b_permit.displace.is_cancelled());
        let mut buf = [0u8; 2];
        b_server.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [0, 58], "the bytes are still there for the handshake");
        // C: silent, waits in vain and is dropped.
        let mut c = TcpStream::connect(at).await.unwrap();
        let (stream, from) = listener.accept().await.unwrap();
        assert!(l.admit(stream, from).is_none());
        crate::test_util::eventually_async(Duration::from_secs(10), "C to be dropped", async || {
            assert!(l.sweep().is_empty());
            l.waiting() == 0
        })
        .await;
        assert!(matches!(c.read(&mut buf).await, Ok(0) | Err(_)), "C still open");
        assert!(l.next_sweep().is_none());
        // D: bytes before its accept, but B (eager too, young) may not be
        // displaced: refused at once.
        let mut d = TcpStream::connect(at).await.unwrap();
        d.write_all(&[0, 58]).await.unwrap();
        let (stream, from) = listener.accept().await.unwrap();
        assert!(l.admit(stream, from).is_none());
        assert_eq!(l.waiting(), 0);
        assert_eq!(l.lifetime(), FaultCounts { refused: 2, displaced: 1, ..Default::default() });
    }

    #[test]
    fn a_full_total_displaces_the_oldest_idle_connection_of_any_source() {
        let l = limiter(2, 8);
        let t0 = Instant::now();
        let x = l.admit_at(addr("10.0.0.1:1"), false, true, t0).0.unwrap();
        let y = l.admit_at(addr("10.0.0.2:1"), false, true, t0).0.unwrap();
        x.first_message_ok();
        let z = l.admit_at(addr("10.0.0.3:1"), false, true, t0 + Duration::from_secs(1)).0;
        assert!(z.is_some());
        assert!(y.displace.is_cancelled() && !x.displace.is_cancelled());
    }

    #[test]
    fn one_warn_per_source_per_period_and_one_summary_line_per_source() {
        let l = limiter(1, 1);
        let t0 = Instant::now();
        let held = l.admit_at(addr("127.0.0.1:1"), false, true, t0).0.unwrap();
        held.first_message_ok();
        let mut warned = 0;
        for i in 0..1934u16 {
            let (p, lines) = l.admit_at(SocketAddr::new("127.0.0.1".parse().unwrap(), 2 + i), false, true, t0);
            assert!(p.is_none());
            warned += lines.len();
        }
        let (_, other) = l.admit_at(addr("10.9.9.9:1"), false, true, t0);
        assert_eq!(warned, 1, "one warn line for the flood");
        assert_eq!(other.len(), 1, "another source gets its own first line");
        let lines = l.report_at(t0 + REPORT_EVERY);
        assert_eq!(
            lines,
            vec![
                "test: refused 1,934 unauthenticated connections from 127.0.0.1 in the last minute \
                 (1,934 over the pre-authentication limits)"
                    .to_owned(),
                "test: refused 1 unauthenticated connections from 10.9.9.9 in the last minute \
                 (1 over the pre-authentication limits)"
                    .to_owned(),
            ]
        );
        // A quiet period logs nothing; the next period warns once again.
        assert!(l.report_at(t0 + 2 * REPORT_EVERY).is_empty());
        let (_, lines) = l.admit_at(addr("127.0.0.1:9"), false, true, t0 + 2 * REPORT_EVERY);
        assert_eq!(lines.len(), 1);
    }

    #[test]
    fn many_sources_share_bounded_counters_and_summary_lines() {
        let l = limiter(1, 1);
        let t0 = Instant::now();
        let held = l.admit_at(addr("127.0.0.1:1"), false, true, t0).0.unwrap();
        held.first_message_ok();
        let mut warned = 0;
        for i in 0..(MAX_TRACKED_SOURCES as u32 + 1000) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            warned += l.admit_at(SocketAddr::new(IpAddr::V4(ip), 1), false, true, t0).1.len();
        }
        assert_eq!(warned, MAX_TRACKED_SOURCES + 1, "one line per tracked source, one for the rest");
        assert!(l.inner.lock().tally.sources.len() <= MAX_TRACKED_SOURCES);
        let lines = l.report_at(t0 + REPORT_EVERY);
        assert_eq!(lines.len(), MAX_SUMMARY_SOURCES + 1, "{lines:?}");
        let rest = lines.last().unwrap();
        let expected = (MAX_TRACKED_SOURCES + 1000 - MAX_SUMMARY_SOURCES) as u64;
        assert!(
            rest.contains(&format!("refused {} unauthenticated connections from other sources", thousands(expected))),
            "{rest}"
        );
    }

    #[tokio::test]
    async fn a_displaced_handshake_ends_at_once_and_a_member_gets_through() {
        let key = ClusterKey::generate();
        let identity = Identity::generate();
        let l = PreAuthLimiter::new("test", PreAuthConfig { total: 8, per_source: 1, idle_grace: Duration::ZERO });
        // An idle connection holds the only place of its source...
        let (_idle_client, idle_server) = tokio::io::duplex(4096);
        let permit = l.admit_addr(addr("127.0.0.1:1"), false).unwrap();
        let (l2, k2, i2) = (l.clone(), key.clone(), identity.clone());
        let idle = tokio::spawn(async move { l2.handshake(permit, idle_server, &k2, &i2).await.map(|_| ()) });
        // ...until a member from the same address takes it.
        let (member_client, member_server) = tokio::io::duplex(4096);
        let permit = l.admit_addr(addr("127.0.0.1:2"), false).expect("the idle one is displaced");
        let (l2, k2, i2) = (l.clone(), key.clone(), identity.clone());
        let server = tokio::spawn(async move { l2.handshake(permit, member_server, &k2, &i2).await.map(|_| ()) });
        assert!(matches!(idle.await.unwrap(), Err(PreAuthError::Displaced)));
        channel::connect(member_client, &key, &Identity::generate()).await.unwrap();
        server.await.unwrap().unwrap();
        assert_eq!(l.in_handshake(), 0);
        assert_eq!(l.lifetime(), FaultCounts { displaced: 1, ..Default::default() });
    }
}
