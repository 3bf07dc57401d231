//! HTTP: `/metrics`, `/` and `/healthz`. Concurrent scrapes share one collection: a scrape
//! that arrives while one is in flight waits for that one's result instead of starting another.
//! The accept loop is our own so that TLS ([`crate::web`]) and graceful shutdown work the same
//! for every connection.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use futures::future::{BoxFuture, FutureExt, Shared};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::{GracefulShutdown, Watcher},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::watch,
};

use crate::{
    collector::SharedEngine,
    deadline::{self, Deadline},
    exposition::{self, Format},
    http_limits::{self, ConnState, ConnTracker, HttpLimits, Limited},
    metrics::MetricSet,
    web::{self, WebHandle},
};

type Collection = Shared<BoxFuture<'static, Arc<MetricSet>>>;

/// A finished collection and when it finished.
type Finished = (Instant, Arc<MetricSet>);

#[derive(Clone)]
pub struct AppState {
    engine: SharedEngine,
    inflight: Arc<Mutex<Option<Collection>>>,
    /// The last finished collection and when it finished: what a request gets within
    /// `--min-collection-interval`, or when the collection it joined is not done by its deadline.
    last: Arc<Mutex<Option<Finished>>>,
    /// When the last collection finished (the systemd watchdog is fed from this).
    finished: Arc<watch::Sender<Option<Instant>>>,
}

impl AppState {
    pub fn new(engine: SharedEngine) -> Self {
        Self { engine, inflight: Arc::default(), last: Arc::default(), finished: Arc::new(watch::Sender::new(None)) }
    }

    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }

    /// Changes each time a collection finishes.
    pub fn finished(&self) -> watch::Receiver<Option<Instant>> {
        self.finished.subscribe()
    }

    /// The deadline of a scrape without a header of its own (`--scrape-timeout`).
    pub fn default_deadline(&self) -> Deadline {
        Deadline::after(self.engine.config.scrape_timeout)
    }

    /// The current collection, answered by `deadline`: the last one if it finished less than
    /// `--min-collection-interval` ago, else the one in flight (joined) or a new one. Should the
    /// collection joined not be done by `deadline` (it was started for a later one), the last
    /// finished collection answers.
    pub async fn scrape(&self, deadline: Deadline) -> Arc<MetricSet> {
        let min_interval = self.engine.config.min_collection_interval;
        if !min_interval.is_zero()
            && let Some((at, set)) = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && at.elapsed() < min_interval
        {
            return set.clone();
        }
        let fut = {
            let mut slot = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(f) => f.clone(),
                None => {
                    let engine = self.engine.clone();
                    // A task of its own: the collection finishes even if the client that
                    // started it goes away, and the blocking reads run off the runtime.
                    let task = tokio::task::spawn_blocking(move || {
                        let set = engine.collect_until(deadline);
                        release_freed_memory();
                        set
                    });
                    let prefix = self.engine.config.metrics_prefix.clone();
                    let (finished, last) = (self.finished.clone(), self.last.clone());
                    let f = async move {
                        let set = match task.await {
                            Ok(set) => set,
                            Err(e) => {
                                log::error!("collection task failed: {e}");
                                Arc::new(MetricSet::new(&prefix))
                            }
                        };
                        let now = Instant::now();
                        // Kept only for the minimum interval: it costs one collection's memory.
                        if !min_interval.is_zero() {
                            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, set.clone()));
                        }
                        finished.send_replace(Some(now));
                        set
                    }
                    .boxed()
                    .shared();
                    *slot = Some(f.clone());
                    f
                }
            }
        };
        let set = match tokio::time::timeout_at(deadline.instant().into(), fut.clone()).await {
            Ok(set) => set,
            Err(_) => {
                let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, s)| s.clone());
                log::debug!("the collection joined is not done by this scrape's deadline: the last one answers");
                return last.unwrap_or_else(|| Arc::new(MetricSet::new(&self.engine.config.metrics_prefix)));
            }
        };
        let mut slot = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|f| f.ptr_eq(&fut)) {
            *slot = None;
        }
        set
    }
}

/// Memory the allocator holds free above which it is handed back to the kernel (the
/// `M_TRIM_THRESHOLD` main.rs sets for the top of the heap).
const KEEP_FREED: usize = 512 << 10;

/// Hand memory freed since the last collection back to the kernel.
/// glibc keeps freed memory in its arenas for reuse and returns only what lies at the top of a
/// heap. Between two collections the free part is each collector's values from the run before
/// (let go as the collector ran again; collector/engine.rs) that the next collectors'
/// text did not reuse, and this collection's temporaries: 1–1.5 MiB at 100 VMs + 100
/// containers, which would otherwise stay in the RSS between scrapes for good; so would a burst
/// of connections (2,000 idle ones hold some 12 MiB of buffers, measured by `cargo xtask soak`).
/// The price is the page faults of the next collection, which takes those pages back: ~180 per
/// scrape at that size, a few % of its CPU (docs/benchmarks.md, "eighth pass"); keeping 1.5 MiB
/// instead took them to ~5 and added 0.3–1 MiB of RSS for no CPU this machine could measure.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallinfo2 and malloc_trim have no preconditions; they lock the arenas themselves.
    unsafe {
        if libc::mallinfo2().fordblks > KEEP_FREED {
            libc::malloc_trim(0);
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/", get(index))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let header = headers.get("x-prometheus-scrape-timeout-seconds").and_then(|v| v.to_str().ok());
    let cfg = &state.engine.config;
    let deadline = Deadline::after(deadline::scrape_budget(header, cfg.scrape_timeout, cfg.scrape_timeout_offset));
    let set = state.scrape(deadline).await;
    let parts = exposition::render_parts(&set, format);
    ([(header::CONTENT_TYPE, format.content_type())], axum::body::Body::new(PartsBody::from(parts))).into_response()
}

/// A response body of the collection's text as it is kept (sealed chunks shared with the
/// collection, [`exposition::render_parts`]), of a known length (a `Content-Length` answer,
/// as a `String` body had). hyper writes the chunks with vectored writes, not copied into
/// one buffer.
struct PartsBody {
    chunks: std::vec::IntoIter<bytes::Bytes>,
    left: u64,
}

impl From<exposition::Parts> for PartsBody {
    fn from(p: exposition::Parts) -> Self {
        Self { chunks: p.chunks.into_iter(), left: p.len as u64 }
    }
}

impl http_body::Body for PartsBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = self.chunks.find(|c| !c.is_empty());
        if let Some(c) = &next {
            self.left = self.left.saturating_sub(c.len() as u64);
        }
        std::task::Poll::Ready(next.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// How long past its deadline a collector group may still be running before `/healthz` says so.
const STUCK_GRACE: Duration = Duration::from_secs(1);

/// `ok`, or 503 naming what is stuck: collector groups running past their collection's
/// deadline (a read that hangs where no time limit reaches), and sources whose call hangs past
/// its limit (pmxcfs, a storage mount). Scrapes still answer meanwhile, without those parts.
async fn healthz(State(state): State<AppState>) -> Response {
    let stuck = state.engine.stuck(STUCK_GRACE);
    if stuck.is_empty() {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let what: Vec<String> =
        stuck.iter().map(|(what, t)| format!("{what}: hangs for {:.1} s", t.as_secs_f64())).collect();
    (StatusCode::SERVICE_UNAVAILABLE, format!("stuck: {}\n", what.join("; "))).into_response()
}

async fn index(State(state): State<AppState>) -> Html<String> {
    let (mode, reason) = state.engine.ebpf_mode();
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    // The collector registry: each line's switch (`--collector.<name>`) and state.
    let rows: String = crate::collector::REGISTRY
        .iter()
        .map(|e| {
            let on = state.engine.config.collector_enabled(e.name);
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                e.name,
                if on { "on" } else { "off" },
                esc(e.help)
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html><head><title>pve-exporter</title></head><body>\
         <h1>pve-exporter {}</h1><p>Mode: <b>{}</b> ({})</p>\
         <ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/healthz\">/healthz</a></li></ul>\
         <h2>Collectors</h2><p>Switched with <code>--collector.&lt;name&gt;</code> / \
         <code>--no-collector.&lt;name&gt;</code>.</p>\
         <table><tr><th>name</th><th>state</th><th>what</th></tr>{rows}</table>\
         </body></html>\n",
        env!("CARGO_PKG_VERSION"),
        esc(&mode),
        esc(&reason)
    ))
}

/// Bind the listening socket, with an error that says what to change.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use std::io::ErrorKind;
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::AddrInUse => format!(
                "port {} is already in use on {} (another exporter or service listens there; choose a free one \
                 with --port)",
                addr.port(),
                addr.ip()
            ),
            ErrorKind::AddrNotAvailable => format!("{} is not an address of this host (see --host)", addr.ip()),
            ErrorKind::PermissionDenied => {
                format!("port {} needs CAP_NET_BIND_SERVICE (ports below 1024); see --port", addr.port())
            }
            _ => "see --host and --port".to_string(),
        };
        anyhow::Error::new(e).context(format!("cannot listen on {addr}: {hint}"))
    })
}

/// Serve on `listener` until `stop` resolves; then stop accepting, let requests in flight
/// finish for up to `grace`, and cut the connections still open. `limits` bound the
/// connections (crate::http_limits).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    web: WebHandle,
    limits: HttpLimits,
    stop: impl Future<Output = ()> + Send,
    grace: Duration,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let current = web.current();
    let scheme = if current.tls.is_some() { "https" } else { "http" };
    log::info!("listening on {scheme}://{local} ({})", current.describe());
    let guard = web::GuardState { web: web.clone(), max_auth_waiting: limits.max_auth_waiting };
    let app = router(state).layer(axum::middleware::from_fn_with_state(guard, web::guard));
    let graceful = GracefulShutdown::new();
    warn_if_cap_above_nofile(limits.max_connections);
    let tracker = ConnTracker::new(limits);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning on the error.
                    log::warn!("accept on {local}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        // At the cap another connection makes room, or this one is closed at once: the loop
        // goes on accepting either way, so the backlog never fills behind a flood.
        let Some(conn) = tracker.admit() else {
            log::debug!("{peer}: refused, {} connections handling requests", limits.max_connections);
            continue;
        };
        let web = web.current();
        let app = app.clone();
        // Taken now, so a connection still in its TLS handshake counts for the shutdown too.
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let state = conn.state.clone();
            let wrap = |s| Limited::new(s, state.clone(), limits.write_timeout);
            let work = async {
                match web::accept(&web, stream, peer, wrap).await {
                    Some(web::Conn::Plain(s)) => serve_connection(s, app, state.clone(), watcher).await,
                    Some(web::Conn::Tls(s)) => serve_connection(s, app, state.clone(), watcher).await,
                    None => {}
                }
            };
            tokio::select! {
                () = work => {}
                why = http_limits::supervise(&conn.state, &limits) => log::debug!("{peer}: connection closed: {why}"),
            }
            drop(conn);
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        log::info!("waiting up to {grace:?} for {open} open connections");
    }
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        log::warn!("shutdown: requests still running after {grace:?} are cut");
    }
    Ok(())
}

/// The cap only works below the open-file limit: past that, accept fails (EMFILE) before the
/// cap can close an idle connection for the new one.
fn warn_if_cap_above_nofile(max_connections: usize) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    // Room for what the daemon holds besides connections (held files, sockets, BPF maps).
    let needed = max_connections as u64 + 1024;
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < needed {
        log::warn!(
            "--web.max-connections {max_connections} is too close to the open-file limit {} (RLIMIT_NOFILE): at \
             that limit new connections fail to be accepted instead of replacing idle ones; raise LimitNOFILE \
             or lower --web.max-connections",
            lim.rlim_cur
        );
    }
}

async fn serve_connection<I>(io: I, app: Router, state: Arc<ConnState>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // The head and idle time limits are http_limits::supervise's: hyper's own header
        // timeout would also run between kept-alive requests and cut every idle connection
        // after the (short) head time.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), Tracked { inner: TowerToHyperService::new(app), conn: state });
    if let Err(e) = watcher.watch(conn).await {
        // hyper's message names the step ("error writing a body"), its source the cause
        // (a write time limit, a reset).
        let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
        log::debug!("connection: {e}{cause}");
    }
}

/// The router as a connection's service, telling the connection's state when a request starts
/// and when its response body is done.
struct Tracked {
    inner: TowerToHyperService<Router>,
    conn: Arc<ConnState>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = hyper::Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.conn.request_started();
        let fut = self.inner.call(req);
        let conn = self.conn.clone();
        async move {
            let resp = fut.await?;
            Ok(resp.map(|body| TrackedBody { body, _done: DoneOnDrop(conn) }))
        }
        .boxed()
    }
}

/// Marks the response done when dropped: hyper drops the body once it has sent all of it, or
/// when the connection fails.
struct DoneOnDrop(Arc<ConnState>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

/// A response body that marks its response done when it is dropped.
struct TrackedBody {
    body: axum::body::Body,
    _done: DoneOnDrop,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
