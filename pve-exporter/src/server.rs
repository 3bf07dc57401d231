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
    metrics::MetricSet,
    web::{self, WebHandle},
};

type Collection = Shared<BoxFuture<'static, Arc<MetricSet>>>;

/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct AppState {
    engine: SharedEngine,
    inflight: Arc<Mutex<Option<Collection>>>,
    /// The last finished collection and when it finished: what a request gets within
    /// `--min-collection-interval`, or when the collection it joined is not done by its deadline.
    last: Arc<Mutex<Option<(Instant, Arc<MetricSet>)>>>,
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
                    let task = tokio::task::spawn_blocking(move || engine.collect_until(deadline));
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
                        *last.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, set.clone()));
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
    let body = exposition::render(set, format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
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
    Html(format!(
        "<!doctype html><html><head><title>pve-exporter</title></head><body>\
         <h1>pve-exporter {}</h1><p>Mode: <b>{}</b> ({})</p>\
         <ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/healthz\">/healthz</a></li></ul>\
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
/// finish for up to `grace`, and cut the connections still open.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    web: WebHandle,
    stop: impl Future<Output = ()> + Send,
    grace: Duration,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let current = web.current();
    let scheme = if current.tls.is_some() { "https" } else { "http" };
    log::info!("listening on {scheme}://{local} ({})", current.describe());
    let app = router(state).layer(axum::middleware::from_fn_with_state(web.clone(), web::guard));
    let graceful = GracefulShutdown::new();
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
        let web = web.current();
        let app = app.clone();
        // Taken now, so a connection still in its TLS handshake counts for the shutdown too.
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match web::accept(&web, stream, peer).await {
                Some(web::Conn::Plain(s)) => serve_connection(s, app, watcher).await,
                Some(web::Conn::Tls(s)) => serve_connection(s, app, watcher).await,
                None => {}
            }
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

async fn serve_connection<I>(io: I, app: Router, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    if let Err(e) = watcher.watch(conn).await {
        log::debug!("connection: {e}");
    }
}
