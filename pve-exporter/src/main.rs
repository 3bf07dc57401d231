use std::{net::SocketAddr, sync::Arc};

use clap::Parser;
use pve_exporter::{collector::Engine, config::Config, server};

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    env_logger::Builder::new().filter_level(config.loglevel.filter()).format_target(false).init();
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.host, config.port);
    let engine = Engine::new(config).map_err(|e| anyhow::anyhow!("eBPF required by --ebpf on but unavailable: {e}"))?;
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(16).enable_all().build()?;
    rt.block_on(server::serve(addr, server::AppState::new(Arc::new(engine)), shutdown_signal()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        log::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = int.recv() => log::info!("SIGINT: shutting down"),
    }
}
