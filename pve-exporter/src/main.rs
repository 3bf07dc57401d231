use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::{ValueEnum, parser::ValueSource};
use pve_exporter::{
    collector::Engine,
    config::{Config, LogLevel},
    http_limits::HttpLimits,
    server::{self, AppState},
    service::{self, Notifier},
    web::{WebHandle, WebRuntime},
};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::watch,
};

fn main() -> std::process::ExitCode {
    tune_malloc();
    let switches = pve_exporter::collector::switches();
    let matches = Config::command_with_collectors(&switches).get_matches();
    let mut config = Config::from_matches_with_collectors(&matches, &switches).unwrap_or_else(|e| e.exit());
    // SAFETY: no other thread exists yet (logging, the runtime and eBPF start below).
    config.api_token = unsafe { pve_exporter::config::take_api_token_from_env() };
    service::init_logging(config.loglevel);
    warn_about_secret_files(&config);
    for d in config.deprecations() {
        log::warn!("{d}");
    }
    // Files held open between scrapes take ~5 descriptors per VM (heldfile.rs), more than the
    // common soft limit of 1024 leaves on a large host; the hard limit is ours to take.
    match pve_exporter::heldfile::raise_nofile_limit() {
        Ok((before, after)) if before != after => {
            log::debug!("RLIMIT_NOFILE: soft limit raised from {before} to {after}")
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot raise the soft RLIMIT_NOFILE to the hard limit: {e}"),
    }
    // Flags given on the command line win over the environment file, also on reload.
    let from_cli = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let cli = CliSet { loglevel: from_cli("loglevel"), web_config_file: from_cli("web_config_file") };
    match run(config, cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The environment file may hold the API token: say so when others can read (or write) it. The
/// token file is checked where it is read (`pve_api::read_token_file`).
fn warn_about_secret_files(config: &Config) {
    if let Some(path) = &config.env_file
        && let Ok(meta) = std::fs::metadata(path)
        && let Some(w) = pve_exporter::config::secret_file_warning(path, &meta)
    {
        log::warn!("{w}");
    }
}

/// Which reloadable flags came from the command line.
#[derive(Clone, Copy)]
struct CliSet {
    loglevel: bool,
    web_config_file: bool,
}

/// Shutdown stages: 1 = stop accepting and finish what is in flight, 2 = a second signal.
type Stop = watch::Sender<u8>;

fn run(config: Config, cli: CliSet) -> anyhow::Result<()> {
    let notifier = Notifier::from_env();
    let addr = SocketAddr::new(config.host, config.port);
    let grace = config.shutdown_timeout;
    // A web config that cannot be used stops the start: serving without the TLS or auth the
    // operator asked for would expose the endpoint.
    let web = WebHandle::new(WebRuntime::load(config.web_config_file.as_deref()).map_err(anyhow::Error::msg)?);
    let env = EnvFile::open(config.env_file.clone(), config.web_config_file.clone());
    // The collection thread outlives the usual scrape interval (15-60 s): no thread start per
    // scrape.
    // One thread serves HTTP: collections run on their own threads (spawn_blocking and the
    // collector groups' workers), bcrypt on the blocking pool, so the runtime only accepts,
    // parses and writes. A multi-thread runtime's worker and its scheduler code (which alone
    // pulls in libm) cost ~0.7 MiB of RSS for nothing (docs/benchmarks.md).
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(300))
        .enable_all()
        .build()?;
    // Handlers first: SIGHUP's default action would end the process while eBPF loads.
    let signals = rt.block_on(async { Signals::install() })?;
    // Bind before loading eBPF: a port that is taken fails the start at once.
    let listener = rt.block_on(server::bind(addr))?;
    let limits = HttpLimits::from_config(&config);
    let engine = Engine::new(config).map_err(|e| anyhow::anyhow!("eBPF required by --ebpf on but unavailable: {e}"))?;
    let state = AppState::new(engine.clone());
    let (stop, stopped) = watch::channel(0u8);
    let result = rt.block_on(async {
        tokio::spawn(handle_signals(signals, stop, web.clone(), env, cli, notifier.clone()));
        tokio::spawn(announce(state.clone(), notifier.clone(), addr));
        if let Some(period) = service::watchdog_period() {
            tokio::spawn(watchdog(state.clone(), notifier.clone(), period));
        }
        let mut rx = stopped.clone();
        let stop_accepting = async move {
            let _ = rx.wait_for(|s| *s >= 1).await;
        };
        let mut rx = stopped;
        let cut = async move {
            let _ = rx.wait_for(|s| *s >= 2).await;
        };
        tokio::select! {
            r = server::serve(listener, state.clone(), web, limits, stop_accepting, grace) => r,
            () = cut => {
                log::warn!("second stop signal: not waiting for requests in flight");
                Ok(())
            }
        }
    });
    drop(state);
    // Tasks still holding the engine (a collection that did not finish) get a moment.
    rt.shutdown_timeout(Duration::from_secs(2));
    release(engine);
    result
}

/// Drop the engine: its eBPF object goes with it, which detaches the programs.
fn release(engine: Engine) {
    let ebpf = engine.ebpf_mode().0 == "ebpf";
    match engine.try_unwrap() {
        Ok(engine) => {
            drop(engine);
            if ebpf {
                log::info!("eBPF programs detached");
            }
        }
        // The kernel detaches them when the process exits a moment later.
        Err(_) => log::warn!("a collection is still running at exit; eBPF programs are detached at process exit"),
    }
}

/// READY=1 once the first collection has finished: only then does /metrics answer with data.
async fn announce(state: AppState, notifier: Notifier, addr: SocketAddr) {
    let t = Instant::now();
    // What start-up freed (the kernel's BTF parsed to load the eBPF programs, megabytes) goes
    // back with the first collection's own trim (server::release_freed_memory).
    state.scrape(state.default_deadline()).await;
    // The served set holds its samples as text (exposition::freeze): ask the engine.
    let failing = state.engine().failing_collectors();
    let (mode, _) = state.engine().ebpf_mode();
    let failing_text = if failing.is_empty() { String::new() } else { format!("; failing: {}", failing.join(", ")) };
    log::info!("ready: first collection took {:?} ({mode} mode{failing_text})", t.elapsed());
    notifier.notify(&format!("READY=1\nSTATUS=serving on {addr}, {mode} mode{failing_text}"));
}

/// Feed the systemd watchdog from finished collections, so a daemon whose collections hang
/// is restarted. Without scrapes it starts a collection itself every third of the period.
async fn watchdog(state: AppState, notifier: Notifier, period: Duration) {
    let mut finished = state.finished();
    let kick = period / 3;
    log::debug!("watchdog: period {period:?}");
    loop {
        match tokio::time::timeout(kick, finished.changed()).await {
            Ok(Ok(())) => notifier.notify("WATCHDOG=1"),
            Ok(Err(_)) => return,
            Err(_) => {
                // Joins the collection in flight, if one is: a hung one is not piled on.
                let s = state.clone();
                tokio::spawn(async move {
                    s.scrape(s.default_deadline()).await;
                });
            }
        }
    }
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mk = |k| signal(k).context("cannot install signal handlers");
        Ok(Self {
            term: mk(SignalKind::terminate())?,
            int: mk(SignalKind::interrupt())?,
            hup: mk(SignalKind::hangup())?,
        })
    }
}

async fn handle_signals(mut s: Signals, stop: Stop, web: WebHandle, mut env: EnvFile, cli: CliSet, notifier: Notifier) {
    loop {
        let name = tokio::select! {
            _ = s.term.recv() => "SIGTERM",
            _ = s.int.recv() => "SIGINT",
            _ = s.hup.recv() => {
                notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", service::monotonic_usec()));
                reload(&web, &mut env, cli).await;
                notifier.notify("READY=1");
                continue;
            }
        };
        if *stop.borrow() == 0 {
            log::info!("{name}: shutting down");
            notifier.notify("STOPPING=1");
            stop.send_replace(1);
        } else {
            stop.send_replace(2);
        }
    }
}

/// Keep the resident set small (docs/benchmarks.md): glibc gives each thread that allocates an
/// arena of its own, and after the first large free it raises its mmap threshold, so each
/// scrape's large buffers (the text of a scrape is hundreds of KiB) stay in the heap. One
/// arena (the main heap, trimmed from its top; a second arena kept ~3 MiB resident after each
/// QMP scrape, measured), and large blocks always mapped and unmapped, return that memory at
/// once. The threads that allocate (the collection, the monitor worker, the HTTP workers) take
/// turns rather than contend: a scrape's work is mostly sequential.
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 10);
    }
}

/// The environment file (`--env-file`) as it was at start-up and at the last reload.
struct EnvFile {
    path: Option<PathBuf>,
    at_start: BTreeMap<String, String>,
    last: BTreeMap<String, String>,
    /// The web config file asked for (the environment file can change it).
    web_config_file: Option<PathBuf>,
}

impl EnvFile {
    fn open(path: Option<PathBuf>, web_config_file: Option<PathBuf>) -> Self {
        let at_start = match &path {
            Some(p) => read_env(p).unwrap_or_else(|e| {
                log::warn!("{e}; SIGHUP will compare against an empty file");
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        Self { path, last: at_start.clone(), at_start, web_config_file }
    }
}

fn read_env(path: &std::path::Path) -> Result<BTreeMap<String, String>, String> {
    let text = pve_exporter::host::read_string_capped(path, 1 << 20)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    service::parse_env_file(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// SIGHUP: apply what the environment file changed that can change at run time, then read
/// the web config file again (new certificates, users). Anything that fails keeps what runs.
async fn reload(web: &WebHandle, env: &mut EnvFile, cli: CliSet) {
    if let Some(path) = env.path.clone() {
        match tokio::task::spawn_blocking(move || read_env(&path)).await {
            Ok(Ok(now)) => {
                let plan = service::reload_plan(&env.at_start, &env.last, &now);
                for (key, value) in &plan.apply {
                    match key.as_str() {
                        "PVE_EXPORTER_LOGLEVEL" if cli.loglevel => {
                            log::warn!("{key} changed, but --loglevel on the command line wins")
                        }
                        "PVE_EXPORTER_LOGLEVEL" => {
                            match value.as_deref().map_or(Ok(LogLevel::Info), |v| LogLevel::from_str(v, true)) {
                                Ok(level) => {
                                    service::set_log_level(level);
                                    log::info!("log level now {level:?}");
                                }
                                Err(e) => log::error!("{key}={value:?} ignored: {e}"),
                            }
                        }
                        "PVE_EXPORTER_WEB_CONFIG_FILE" if cli.web_config_file => {
                            log::warn!("{key} changed, but --web.config.file on the command line wins")
                        }
                        "PVE_EXPORTER_WEB_CONFIG_FILE" => {
                            env.web_config_file = value.as_deref().filter(|v| !v.is_empty()).map(PathBuf::from);
                        }
                        _ => {}
                    }
                }
                if !plan.need_restart.is_empty() {
                    log::warn!(
                        "changed in the environment file, effective after a restart: {}",
                        plan.need_restart.join(", ")
                    );
                }
                env.last = now;
            }
            Ok(Err(e)) => log::error!("reload: {e}; keeping the current settings"),
            Err(e) => log::error!("reload: {e}"),
        }
    }
    let path = env.web_config_file.clone();
    match tokio::task::spawn_blocking(move || WebRuntime::load(path.as_deref())).await {
        Ok(Ok(new)) => {
            log::info!("reloaded: {}", new.describe());
            web.replace(new);
        }
        Ok(Err(e)) => log::error!("reload: web config: {e}; keeping the current one"),
        Err(e) => log::error!("reload: {e}"),
    }
}
