//! HTTP: `/metrics`, `/` and `/healthz`. Concurrent scrapes share one collection: a scrape
//! that arrives while one is in flight waits for that one's result instead of starting another.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::{
    collector::SharedEngine,
    exposition::{self, Format},
    metrics::MetricSet,
};

type Collection = Shared<BoxFuture<'static, Arc<MetricSet>>>;

#[derive(Clone)]
pub struct AppState {
    engine: SharedEngine,
    inflight: Arc<Mutex<Option<Collection>>>,
}

impl AppState {
    pub fn new(engine: SharedEngine) -> Self {
        Self { engine, inflight: Arc::default() }
    }

    /// The current collection: joins the one in flight or starts one.
    pub async fn scrape(&self) -> Arc<MetricSet> {
        let fut = {
            let mut slot = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some(f) => f.clone(),
                None => {
                    let engine = self.engine.clone();
                    // A task of its own: the collection finishes even if the client that
                    // started it goes away, and the blocking reads run off the runtime.
                    let task = tokio::task::spawn_blocking(move || engine.collect());
                    let prefix = self.engine.config.metrics_prefix.clone();
                    let f = async move {
                        match task.await {
                            Ok(set) => Arc::new(set),
                            Err(e) => {
                                log::error!("collection task failed: {e}");
                                Arc::new(MetricSet::new(&prefix))
                            }
                        }
                    }
                    .boxed()
                    .shared();
                    *slot = Some(f.clone());
                    f
                }
            }
        };
        let set = fut.clone().await;
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
    let set = state.scrape().await;
    let body = exposition::render(set, format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
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

/// Bind and serve until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is another exporter already using the port? see --port/--host)")
    })?;
    log::info!("listening on http://{}", listener.local_addr().unwrap_or(addr));
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await.context("HTTP server")?;
    Ok(())
}
