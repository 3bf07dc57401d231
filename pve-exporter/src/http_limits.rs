//! HTTP connection limits: how many connections may be open at once, how long a client may take
//! to send its request head, how long a keep-alive connection may sit idle, and how long
//! writing one response may take.
//!
//! Every connection has a [`ConnState`] that the connection's I/O wrapper ([`Limited`]) and its
//! service keep up to date: waiting for a request head ([`Phase::Head`]: a new connection, or the
//! first bytes of the next request on a kept-alive one), handling a request ([`Phase::Busy`],
//! until the response body is done), or idle between requests ([`Phase::Idle`]). A supervisor
//! ([`supervise`]) closes the connection when the head or idle time is up; [`Limited`] fails a
//! write that is still blocked when the response's write time is up (a client that does not
//! read).
//!
//! At the connection cap the accept loop does not stop accepting (that would leave Prometheus's
//! next connection in the kernel's backlog behind the flood): it closes the connection that is
//! least likely to be a working client ([`pick_victim`]): first one that has not sent a complete
//! request head, oldest first (idle sockets, slowloris); then one whose response has been stuck
//! on a client that does not read for a while; then the longest idle keep-alive connection. Only
//! when every connection is handling a request is the new one closed at once. A scraper's
//! connection thus gets in even under a flood of idle connections, and once its request head is
//! read it is not closed for newcomers (unless it stops reading its answer).

use std::{
    collections::HashMap,
    future::Future as _,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

// tokio's clock: the same as std's in production, and the tests can pause it.
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::{Instant, Sleep},
};

use crate::config::Config;

/// The limits, from the `--web.*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// From a connection's start (or the first byte of its next request) to a complete request
    /// head, the TLS handshake included.
    pub header_timeout: Duration,
    /// A kept-alive connection without a request is closed after this.
    pub idle_timeout: Duration,
    /// From the first byte of a response to its last: a write still blocked after it fails and
    /// the connection is closed.
    pub write_timeout: Duration,
    /// Basic-auth checks that may wait for one of the bcrypt slots; more get 503.
    pub max_auth_waiting: usize,
}

impl Default for HttpLimits {
    /// The production defaults (the flags' defaults).
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(10),
            max_auth_waiting: 16,
        }
    }
}

impl HttpLimits {
    pub fn from_config(c: &Config) -> Self {
        Self {
            max_connections: c.web_max_connections as usize,
            header_timeout: c.web_read_header_timeout,
            idle_timeout: c.web_idle_timeout,
            write_timeout: c.web_write_timeout,
            max_auth_waiting: c.web_max_auth_waiting as usize,
        }
    }
}

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for (the rest of) a request head.
    Head = 0,
    /// A request is being handled or its response written.
    Busy = 1,
    /// Kept alive, no byte of a next request yet.
    Idle = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Head,
            1 => Phase::Busy,
            _ => Phase::Idle,
        }
    }
}

/// How long a write must have been blocked before a busy connection counts as a client that
/// does not read (and may be closed for a newcomer at the cap). Shorter stalls are normal: a
/// reader on a slow link, or one that reads in bursts.
const STALL_EVICTABLE: Duration = Duration::from_secs(1);

/// The state of one connection, shared by its I/O wrapper, its service, its supervisor and the
/// accept loop. Times are milliseconds since the tracker's epoch, plus one (0: not set).
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    phase: AtomicU8,
    since: AtomicU64,
    /// When the current response's first write happened.
    write_started: AtomicU64,
    /// Since when a write has been blocked (the client does not read).
    stalled: AtomicU64,
    /// Set by the accept loop to close this connection for a newcomer.
    closing: AtomicBool,
    wake: Notify,
}

impl ConnState {
    fn new(epoch: Instant) -> Self {
        let s = Self {
            epoch,
            phase: AtomicU8::new(Phase::Head as u8),
            since: AtomicU64::new(0),
            write_started: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            wake: Notify::new(),
        };
        s.since.store(s.now(), Ordering::Relaxed);
        s
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, t: u64) -> Instant {
        self.epoch + Duration::from_millis(t.saturating_sub(1))
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn set_phase(&self, p: Phase) {
        self.since.store(self.now(), Ordering::Relaxed);
        self.phase.store(p as u8, Ordering::Release);
        self.wake.notify_one();
    }

    /// A request head was read: the request is handled from now on, and its response gets a
    /// write time of its own.
    pub fn request_started(&self) {
        self.write_started.store(0, Ordering::Relaxed);
        self.set_phase(Phase::Busy);
    }

    /// The response body is done (or dropped): idle until the next request's first byte.
    pub fn response_done(&self) {
        if self.phase() == Phase::Busy {
            self.set_phase(Phase::Idle);
        }
    }

    fn bytes_read(&self) {
        // Only the first bytes of a next request start its head time.
        if self.phase() == Phase::Idle {
            self.set_phase(Phase::Head);
        }
    }

    fn evict(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn snapshot(&self, id: u64) -> Candidate {
        Candidate {
            id,
            phase: self.phase(),
            since: self.since.load(Ordering::Relaxed),
            stalled: self.stalled.load(Ordering::Relaxed),
        }
    }
}

/// What the accept loop weighs when it must close a connection for a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub id: u64,
    pub phase: Phase,
    /// Start of the phase (ms since the epoch, +1).
    pub since: u64,
    /// Start of a blocked write (ms since the epoch, +1), 0: none.
    pub stalled: u64,
}

/// The connection to close for a newcomer when the cap is reached, at `now` (ms since the
/// epoch, +1); None: every connection is handling a request that makes progress.
pub fn pick_victim(conns: &[Candidate], now: u64) -> Option<u64> {
    let stall_ms = STALL_EVICTABLE.as_millis() as u64;
    let oldest = |filter: &dyn Fn(&Candidate) -> Option<u64>| {
        conns.iter().filter_map(|c| Some((filter(c)?, c.id))).min().map(|(_, id)| id)
    };
    oldest(&|c| (c.phase == Phase::Head).then_some(c.since))
        .or_else(|| {
            oldest(&|c| {
                (c.phase == Phase::Busy && c.stalled != 0 && now.saturating_sub(c.stalled) >= stall_ms)
                    .then_some(c.stalled)
            })
        })
        .or_else(|| oldest(&|c| (c.phase == Phase::Idle).then_some(c.since)))
}

/// The open connections, for the cap.
#[derive(Debug)]
pub struct ConnTracker {
    epoch: Instant,
    limits: HttpLimits,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    report: Mutex<CapReport>,
}

/// Connections closed at the cap since the last log line, so that a flood logs once a minute
/// rather than once per connection.
#[derive(Debug, Default)]
struct CapReport {
    evicted: u64,
    refused: u64,
    logged: Option<Instant>,
}

const REPORT_EVERY: Duration = Duration::from_secs(60);

/// A connection the tracker admitted; dropping it removes the connection from the count.
#[derive(Debug)]
pub struct ConnGuard {
    tracker: Arc<ConnTracker>,
    id: u64,
    pub state: Arc<ConnState>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.tracker.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl ConnTracker {
    pub fn new(limits: HttpLimits) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            limits,
            conns: Mutex::default(),
            next_id: AtomicU64::new(0),
            report: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// Connections counted now.
    pub fn open(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Admit a new connection; at the cap another one is closed for it (see [`pick_victim`]),
    /// or, when all are handling requests, None: close the new one at once.
    pub fn admit(self: &Arc<Self>) -> Option<ConnGuard> {
        let state = Arc::new(ConnState::new(self.epoch));
        let (evicted, guard) = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            let mut evicted = false;
            if conns.len() >= self.limits.max_connections {
                let now = state.now();
                let candidates: Vec<Candidate> = conns.iter().map(|(&id, s)| s.snapshot(id)).collect();
                match pick_victim(&candidates, now).and_then(|id| conns.remove(&id)) {
                    Some(victim) => {
                        // Its task closes the socket; it no longer counts from now on.
                        victim.evict();
                        evicted = true;
                    }
                    None => {
                        drop(conns);
                        self.note(false);
                        return None;
                    }
                }
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            conns.insert(id, state.clone());
            (evicted, ConnGuard { tracker: self.clone(), id, state })
        };
        if evicted {
            self.note(true);
        }
        Some(guard)
    }

    fn note(&self, evicted: bool) {
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        if evicted {
            r.evicted += 1;
        } else {
            r.refused += 1;
        }
        if r.logged.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            log::warn!(
                "HTTP connection limit ({} open, --web.max-connections) reached: {} connections without a request \
                 closed for new ones, {} new connections refused while all were handling requests{}",
                self.limits.max_connections,
                r.evicted,
                r.refused,
                if r.logged.is_some() { " in the last minute" } else { "" }
            );
            r.evicted = 0;
            r.refused = 0;
            r.logged = Some(Instant::now());
        }
    }
}

/// Resolves when the connection must be closed: its head or idle time is up, or the accept
/// loop closed it for a newcomer. Never while a request is being handled (the write time limit
/// of [`Limited`] covers a response that does not get out).
pub async fn supervise(state: &ConnState, limits: &HttpLimits) -> &'static str {
    loop {
        // Registered before the state is read: a change after the read wakes us.
        let notified = state.wake.notified();
        if state.closing.load(Ordering::Acquire) {
            return "closed for a new connection at --web.max-connections";
        }
        let (limit, what) = match state.phase() {
            Phase::Head => (Some(limits.header_timeout), "no complete request head within --web.read-header-timeout"),
            Phase::Idle => (Some(limits.idle_timeout), "idle longer than --web.idle-timeout"),
            Phase::Busy => (None, ""),
        };
        match limit {
            Some(limit) => {
                let deadline = state.at(state.since.load(Ordering::Relaxed)) + limit;
                if Instant::now() >= deadline {
                    return what;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

/// A connection's socket (or any stream) with the write time limit, telling its [`ConnState`]
/// when the bytes of a next request arrive.
pub struct Limited<I> {
    io: I,
    state: Arc<ConnState>,
    write_timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<I> Limited<I> {
    pub fn new(io: I, state: Arc<ConnState>, write_timeout: Duration) -> Self {
        Self { io, state, write_timeout, timer: None }
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// Around a write, flush or shutdown of the inner stream: the first one of a response
    /// starts its write time; one that blocks past it fails with `TimedOut`.
    fn limit<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let s = &self.state;
        if s.write_started.load(Ordering::Relaxed) == 0 {
            s.write_started.store(s.now(), Ordering::Relaxed);
        }
        match r {
            Poll::Ready(r) => {
                s.stalled.store(0, Ordering::Relaxed);
                self.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if s.stalled.load(Ordering::Relaxed) == 0 {
                    s.stalled.store(s.now(), Ordering::Relaxed);
                }
                let deadline = s.at(s.write_started.load(Ordering::Relaxed)) + self.write_timeout;
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not take the response within --web.write-timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Limited<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Limited<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.limit(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.limit(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.limit(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.limit(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, phase: Phase, since: u64, stalled: u64) -> Candidate {
        Candidate { id, phase, since, stalled }
    }

    #[test]
    fn the_defaults_are_the_flags_defaults() {
        let c = Config::from_args(["pve-exporter"]).unwrap();
        assert_eq!(HttpLimits::from_config(&c), HttpLimits::default());
        assert!(Config::from_args(["pve-exporter", "--web.write-timeout", "0s"]).is_err());
        let c =
            Config::from_args(["pve-exporter", "--web.idle-timeout", "1m30s", "--web.max-connections", "8"]).unwrap();
        assert_eq!(HttpLimits::from_config(&c).idle_timeout, Duration::from_secs(90));
        assert_eq!(HttpLimits::from_config(&c).max_connections, 8);
    }

    #[test]
    fn victims_in_order_connections_without_a_request_first() {
        let now = 100_000;
        let busy = c(1, Phase::Busy, 10, 0);
        let idle_old = c(2, Phase::Idle, 20, 0);
        let idle_new = c(3, Phase::Idle, 90_000, 0);
        let head_new = c(4, Phase::Head, 99_000, 0);
        let head_old = c(5, Phase::Head, 50_000, 0);
        let stalled_long = c(6, Phase::Busy, 30, 60_000);
        let stalled_short = c(7, Phase::Busy, 30, 99_900);
        let all = [busy, idle_old, idle_new, head_new, head_old, stalled_long, stalled_short];
        // The oldest connection still waiting for its request head, even before older idle ones.
        assert_eq!(pick_victim(&all, now), Some(5));
        // Then a response stuck on a client that does not read (only a stall of a second or more).
        let no_head = [busy, idle_old, idle_new, stalled_long, stalled_short];
        assert_eq!(pick_victim(&no_head, now), Some(6));
        // Then the longest idle keep-alive connection.
        assert_eq!(pick_victim(&[busy, idle_new, idle_old, stalled_short], now), Some(2));
        // Every connection is handling a request that makes progress: refuse the newcomer.
        assert_eq!(pick_victim(&[busy, stalled_short], now), None);
        assert_eq!(pick_victim(&[], now), None);
    }

    #[tokio::test]
    async fn the_cap_closes_connections_without_a_request_and_refuses_when_all_are_busy() {
        let limits = HttpLimits { max_connections: 3, ..HttpLimits::default() };
        let t = ConnTracker::new(limits);
        let a = t.admit().expect("a");
        let b = t.admit().expect("b");
        let c = t.admit().expect("c");
        b.state.request_started();
        c.state.request_started();
        assert_eq!(t.open(), 3);
        // At the cap: `a` has sent nothing, so it makes room.
        let d = t.admit().expect("d");
        assert!(a.state.closing.load(Ordering::Acquire));
        assert_eq!(supervise(&a.state, &limits).await, "closed for a new connection at --web.max-connections");
        assert_eq!(t.open(), 3);
        drop(a); // its task ends: nothing changes, it was counted out already
        assert_eq!(t.open(), 3);
        d.state.request_started();
        // b, c, d handle requests: the next one is refused.
        assert!(t.admit().is_none());
        // A finished response makes its connection idle, and that one goes next.
        c.state.response_done();
        assert_eq!(c.state.phase(), Phase::Idle);
        let e = t.admit().expect("e");
        assert!(c.state.closing.load(Ordering::Acquire));
        drop((b, c, d, e));
        assert_eq!(t.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn head_and_idle_time_limits() {
        let limits = HttpLimits::default();
        let t = ConnTracker::new(limits);
        let g = t.admit().expect("admit");
        let start = Instant::now();
        assert_eq!(supervise(&g.state, &limits).await, "no complete request head within --web.read-header-timeout");
        assert!(start.elapsed() >= limits.header_timeout);
        g.state.request_started();
        g.state.response_done();
        let start = Instant::now();
        assert_eq!(supervise(&g.state, &limits).await, "idle longer than --web.idle-timeout");
        assert!(start.elapsed() >= limits.idle_timeout);
    }
}
