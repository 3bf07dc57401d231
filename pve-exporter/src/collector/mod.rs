//! Collection: one scrape runs every collector over the sources and fills one [`MetricSet`].
//! Each collector's failure is its own: it loses its series and reports
//! `pve_exporter_collector_success{collector} 0`; the scrape goes on.

mod kvm;
mod selfmetrics;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    host::HostRoot,
    metrics::MetricSet,
    sources::{
        ebpf::{self, EbpfStatus},
        pve_config::{PveConfig, PveConfigReader},
    },
    vm::{self, PveSource, Vm},
};

/// How one collector did in a scrape.
#[derive(Debug, Clone)]
pub struct CollectorRun {
    pub name: &'static str,
    pub duration: Duration,
    pub success: bool,
}

/// Long-lived state shared by all scrapes.
pub struct Engine {
    pub config: Config,
    pub host: HostRoot,
    pve_config: Arc<PveConfigReader>,
    /// eBPF state; the lock is held only while a scrape reads the maps.
    ebpf: Mutex<EbpfStatus>,
    /// Collectors that failed in the last scrape: failures are logged when they start and
    /// end, not on every scrape.
    failing: Mutex<HashSet<&'static str>>,
}

impl Engine {
    /// Build the engine; this loads and attaches the eBPF programs (Err: `--ebpf on` failed).
    pub fn new(config: Config) -> Result<Self, String> {
        let host = HostRoot::new(&config.root);
        let ebpf = ebpf::start(&host, config.ebpf, &config.ebpf_events)?;
        Ok(Self { host, pve_config: PveConfigReader::new(), ebpf: Mutex::new(ebpf), failing: Mutex::default(), config })
    }

    pub fn ebpf_mode(&self) -> (String, String) {
        let st = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        (st.mode.to_string(), st.reason.clone())
    }

    /// One whole scrape. Blocking: call it from a blocking thread.
    pub fn collect(&self) -> MetricSet {
        let start = Instant::now();
        let mut out = MetricSet::new(&self.config.metrics_prefix);
        let mut runs = Vec::new();

        if self.config.collect_running_vms {
            let mut pve: Option<PveConfig> = None;
            self.timed(&mut runs, "pve_config", || {
                let c = self.pve_config.read(&self.host, self.config.pmxcfs_timeout).map_err(|e| e.to_string())?;
                pve = Some(c);
                Ok(())
            });
            let mut vms: Vec<Vm> = Vec::new();
            self.timed(&mut runs, "kvm", || {
                let found = vm::discover(&self.host, &PveSource { config: pve.as_ref() })
                    .map_err(|e| format!("listing /proc: {e}"))?;
                for (pid, why) in &found.skipped {
                    log::debug!("pid {pid}: not reported: {why}");
                }
                vms = found.vms;
                kvm::collect(&self.host, &mut vms, &mut out)
            });
            let mut st = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(counters) = st.counters.as_mut() {
                self.timed(&mut runs, "ebpf", || kvm::collect_ebpf(&self.host, counters, &vms, &mut out));
            }
        }

        let st = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        selfmetrics::collect(&st, &runs, start.elapsed(), &mut out);
        out
    }
}

impl Engine {
    fn timed(&self, runs: &mut Vec<CollectorRun>, name: &'static str, f: impl FnOnce() -> Result<(), String>) {
        let t = Instant::now();
        let r = f();
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match &r {
            Err(e) if failing.insert(name) => log::warn!("collector {name} failed: {e}"),
            Err(e) => log::debug!("collector {name} still failing: {e}"),
            Ok(()) if failing.remove(name) => log::info!("collector {name} works again"),
            Ok(()) => {}
        }
        runs.push(CollectorRun { name, duration: t.elapsed(), success: r.is_ok() });
    }
}

/// Shared handle.
pub type SharedEngine = Arc<Engine>;
