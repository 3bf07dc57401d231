//! `cargo xtask bench ebpf`: what the eBPF programs cost a guest that exits a lot.
//! docs/benchmarks.md (section ebpf) has the results; docs/ebpf.md explains the programs.
//!
//! One exit-heavy test guest runs for the whole bench: a PVE-shaped `pve-test-guest` (VM 900,
//! `exec -a /usr/bin/kvm`, a config under a host root whose /proc and /sys are the real ones)
//! whose vCPU makes bursts of port writes, each an exit to user space, and reports each
//! burst's CLOCK_MONOTONIC start and end (`-pio-report`). Pinning: the guest (every thread) on
//! CPU 1, this process and so the daemon on CPU 0. The programs run in the guest's context, on
//! CPU 1; the daemon's scrapes stay off it.
//!
//! Each round measures, in a rotating order, guest throughput (port writes per second of burst
//! time, bursts that started after the configuration was in place) under:
//! - `none`: nothing attached;
//! - `noop`: a program that only returns 0 on each tracepoint the daemon uses, attached the way
//!   the daemon attaches there (perf tracepoint or raw tracepoint): the floor any program pays;
//! - `daemon`: `pve-exporter --ebpf on` (every program), the VM registered by a first scrape.
//!
//! and, with the kernel's BPF run-time statistics on, the daemon's per-program runs and run time
//! from its /metrics (`--ebpf-stats`) and the same for the no-op programs (from their fdinfo).
//! Ratios are taken within a round, so load from other work on the machine hits both sides;
//! the table gives medians over rounds and the load average.
//!
//! `BENCH_EBPF_DAEMON=<path>` measures another pve-exporter binary (an older build, say) with
//! the same guest and harness.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{fs::symlink, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

use super::{Bench, Daemon, median_p99};

/// The bench's VM (a range no test uses).
const VMID: u32 = 900;
const DAEMON_CPU: usize = 0;
const GUEST_CPU: usize = 1;

/// How a program of the daemon is attached, so that the no-op floor is attached the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attach {
    /// A perf tracepoint (`BPF_PROG_TYPE_TRACEPOINT`): the kernel fills the trace record first.
    Perf,
    /// A raw tracepoint (`BPF_PROG_TYPE_RAW_TRACEPOINT`): the tracepoint's arguments, no record.
    Raw,
}

/// (program, `category:event`, how) of every program the daemon attached, from its /metrics.
type Attached = Vec<(String, String, Attach)>;

struct Params {
    rounds: usize,
    /// Port writes per burst (one vCPU).
    writes: u64,
    /// Bursts timed per configuration and round.
    bursts: usize,
}

pub fn run(bench: &Bench) -> Result<()> {
    let alt;
    let bench = match std::env::var_os("BENCH_EBPF_DAEMON") {
        Some(daemon) => {
            alt = other_daemon(bench, Path::new(&daemon))?;
            &alt
        }
        None => bench,
    };
    let p = if bench.quick {
        Params { rounds: 2, writes: 3000, bursts: 2 }
    } else {
        Params { rounds: 9, writes: 20_000, bursts: 3 }
    };
    let (load_before, machine) = (loadavg(), machine());
    pin_self(DAEMON_CPU)?;
    let root = bench.dir.join("ebpf-root");
    make_root(&root)?;
    let guest = Guest::start(bench, &root, p.writes)?;
    let root_s = root.to_string_lossy().into_owned();
    let plain = ["--root", root_s.as_str(), "--ebpf", "on"];
    let with_stats = ["--root", root_s.as_str(), "--ebpf", "on", "--ebpf-stats"];

    // What the daemon attaches here, for the no-op floor.
    let attached = {
        let d = Daemon::start(bench, &plain)?;
        attached_programs(&d.scrape()?.1, &program_types(d.child.id())?)?
    };
    if attached.is_empty() {
        bail!("the daemon attached no program");
    }

    let configs = ["none", "noop", "daemon"];
    let mut rate: BTreeMap<&str, Vec<Rate>> = BTreeMap::new();
    let mut ratio: BTreeMap<&str, Vec<Rate>> = BTreeMap::new();
    // program -> per-round (ns per run, runs per port write); "noop" the same per tracepoint.
    let mut prog_ns: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut noop_ns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut kvm_avg: Vec<f64> = Vec::new();
    let mut kvm_per_write: Vec<f64> = Vec::new();
    let mut noop_kvm_avg: Vec<f64> = Vec::new();
    let mut loads = Vec::new();
    let mut foreign = 0usize;
    for round in 0..p.rounds {
        loads.push(loadavg());
        let mut this: BTreeMap<&str, Rate> = BTreeMap::new();
        for k in 0..configs.len() {
            let cfg = configs[(round + k) % configs.len()];
            let r = match cfg {
                "none" => {
                    foreign = foreign.max(foreign_tracepoint_programs());
                    guest.throughput(p.bursts)?
                }
                "noop" => {
                    let _noop = Noop::attach(&attached)?;
                    guest.throughput(p.bursts)?
                }
                _ => {
                    let d = Daemon::start(bench, &plain)?;
                    d.scrape()?; // registers the VM's vCPU threads
                    guest.throughput(p.bursts)?
                }
            };
            this.insert(cfg, r);
        }
        let none = this["none"];
        for (cfg, r) in &this {
            rate.entry(cfg).or_default().push(*r);
            ratio.entry(cfg).or_default().push(Rate { cpu: r.cpu / none.cpu, wall: r.wall / none.wall });
        }

        // Run time per program, kernel statistics on (they add two clock reads per run).
        {
            let d = Daemon::start(bench, &with_stats)?;
            let m0 = d.scrape()?.1;
            guest.throughput(p.bursts)?;
            let m1 = d.scrape()?.1;
            let pio = |m: &str| {
                sample(m, "pve_kvm_tracepoint_events_total", &[("id", &VMID.to_string()), ("event", "kvm_pio")])
            };
            let writes = pio(&m1).unwrap_or(0.0) - pio(&m0).unwrap_or(0.0);
            if writes <= 0.0 {
                bail!("the daemon counted no port writes of VM {VMID}");
            }
            let (mut kvm_t, mut kvm_n) = (0.0, 0.0);
            for (prog, tp, _) in &attached {
                let runs = delta(&m0, &m1, "pve_exporter_ebpf_program_runs_total", prog);
                let secs = delta(&m0, &m1, "pve_exporter_ebpf_program_run_seconds_total", prog);
                if runs > 0.0 {
                    prog_ns.entry(prog.clone()).or_default().push((secs * 1e9 / runs, runs / writes));
                }
                if tp.starts_with("kvm:") {
                    kvm_t += secs * 1e9;
                    kvm_n += runs;
                }
            }
            if kvm_n > 0.0 {
                kvm_avg.push(kvm_t / kvm_n);
                kvm_per_write.push(kvm_t / writes);
            }
        }
        {
            let _stats = enable_stats()?;
            let noop = Noop::attach(&attached)?;
            let s0 = noop.stats()?;
            guest.throughput(p.bursts)?;
            let s1 = noop.stats()?;
            let (mut t, mut n) = (0.0, 0.0);
            for ((key, (n0, t0)), (_, (n1, t1))) in s0.iter().zip(s1.iter()) {
                let (runs, ns) = ((n1 - n0) as f64, (t1 - t0) as f64);
                if runs > 0.0 {
                    noop_ns.entry(key.clone()).or_default().push(ns / runs);
                    if key.contains(" kvm:") {
                        t += ns;
                        n += runs;
                    }
                }
            }
            if n > 0.0 {
                noop_kvm_avg.push(t / n);
            }
        }
        println!(
            "    round {}: none {:.0}/s per CPU-s ({:.0}/s wall); ratio to none per CPU-s (wall): noop {:.3} ({:.3}), \
             daemon {:.3} ({:.3}); load {}",
            round + 1,
            none.cpu,
            none.wall,
            this["noop"].cpu / none.cpu,
            this["noop"].wall / none.wall,
            this["daemon"].cpu / none.cpu,
            this["daemon"].wall / none.wall,
            loads.last().map_or("", String::as_str)
        );
    }
    drop(guest);

    let med = |v: &[f64]| median_p99(&mut v.to_vec()).0;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Guest: 1 vCPU, bursts of {} port writes (each one kvm_pio, one exit to user space), {} bursts per \
         configuration and round, {} rounds in rotating order; guest on CPU {GUEST_CPU}, daemon and bench on CPU \
         {DAEMON_CPU}.\n",
        p.writes, p.bursts, p.rounds
    );
    let _ = writeln!(
        md,
        "| configuration | port writes per CPU-second of the vCPU (median) | ratio to none (median of per-round ratios) | port writes per wall second (median) | ratio to none, wall |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (cfg, what) in [
        ("none", "nothing attached"),
        ("noop", "a `return 0` program per (program, tracepoint) of the daemon, attached alike"),
        ("daemon", "pve-exporter --ebpf on (all programs)"),
    ] {
        let pick = |v: &[Rate], f: fn(&Rate) -> f64| med(&v.iter().map(f).collect::<Vec<_>>());
        let _ = writeln!(
            md,
            "| {cfg}: {what} | {:.0} | {:.3} | {:.0} | {:.3} |",
            pick(&rate[cfg], |r| r.cpu),
            pick(&ratio[cfg], |r| r.cpu),
            pick(&rate[cfg], |r| r.wall),
            pick(&ratio[cfg], |r| r.wall),
        );
    }
    let _ = writeln!(
        md,
        "\n| program | tracepoint | attach | runs per port write | ns per run (bpf_stats, median) | no-op on the same tracepoint (ns per run) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (prog, tp, how) in &attached {
        let Some(v) = prog_ns.get(prog) else { continue };
        let ns: Vec<f64> = v.iter().map(|x| x.0).collect();
        let per: Vec<f64> = v.iter().map(|x| x.1).collect();
        let floor = noop_ns.get(&noop_key(prog, tp)).map_or("-".to_string(), |v| format!("{:.1}", med(v)));
        let _ = writeln!(
            md,
            "| `{prog}` | {tp} | {} | {:.2} | {:.1} | {floor} |",
            if *how == Attach::Raw { "raw" } else { "perf" },
            med(&per),
            med(&ns)
        );
    }
    let _ = writeln!(md, "| **kvm programs, per run** | | | | **{:.1}** | {:.1} |", med(&kvm_avg), med(&noop_kvm_avg));
    let _ = writeln!(md, "| kvm programs, per port write (sum) | | | | {:.0} | |", med(&kvm_per_write));
    let _ = writeln!(
        md,
        "\nMachine: {}; load average before {load_before}, per round {}, after {}. Tracepoint programs of \
         others loaded during `none` rounds (max): {foreign}.",
        machine,
        loads.join(" / "),
        loadavg()
    );
    let part = if std::env::var_os("BENCH_EBPF_DAEMON").is_some() { "ebpf-other-daemon" } else { "ebpf" };
    bench.report(part, &md)
}

/// A Bench whose `pve-exporter` is `daemon` (its guest stays this build's).
fn other_daemon(bench: &Bench, daemon: &Path) -> Result<Bench> {
    let bin = bench.dir.join("ebpf-other-daemon");
    if bin.exists() {
        fs::remove_dir_all(&bin).with_context(|| format!("removing {}", bin.display()))?;
    }
    fs::create_dir_all(&bin)?;
    let daemon = fs::canonicalize(daemon).with_context(|| format!("BENCH_EBPF_DAEMON {}", daemon.display()))?;
    symlink(&daemon, bin.join("pve-exporter"))?;
    symlink(bench.bin.join("pve-test-guest"), bin.join("pve-test-guest"))?;
    println!("    daemon: {}", daemon.display());
    Ok(Bench { quick: bench.quick, bin, dir: bench.dir.clone() })
}

/// A host root with the real /proc and /sys and VM 900's config.
fn make_root(root: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(root.join("etc/pve/qemu-server"))?;
    symlink("/proc", root.join("proc"))?;
    symlink("/sys", root.join("sys"))?;
    fs::write(root.join(format!("etc/pve/qemu-server/{VMID}.conf")), "cores: 1\nmemory: 32\nname: ebpf-bench\n")?;
    Ok(())
}

// ---- the guest ----------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Burst {
    writes: u64,
    start_ns: u64,
    end_ns: u64,
    /// CPU time of the vCPU thread for the burst.
    cpu_ns: u64,
}

/// Port writes per second over some bursts: per second of the vCPU thread's CPU time (what
/// an exit costs, BPF programs included; other load on the machine does not stretch it), and
/// per second of wall time.
#[derive(Clone, Copy, Default)]
struct Rate {
    cpu: f64,
    wall: f64,
}

/// The exit-heavy guest: bursts back to back (1 ms apart), each timed by the guest itself.
struct Guest {
    child: Child,
    bursts: Arc<Mutex<Vec<Burst>>>,
}

impl Guest {
    fn start(bench: &Bench, root: &Path, writes: u64) -> Result<Guest> {
        let mut c = Command::new(bench.bin.join("pve-test-guest"));
        c.arg0("/usr/bin/kvm")
            .args(["-id", &VMID.to_string(), "-name", "ebpf-bench,debug-threads=on", "-smp", "1", "-m", "32"])
            .args(["-pio-writes", &writes.to_string(), "-pio-interval-ms", "1", "-pio-report"])
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                set_affinity(0, GUEST_CPU)
            });
        }
        let mut child = c.spawn().context("starting pve-test-guest")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no guest stdout"))?;
        let bursts = Arc::new(Mutex::new(Vec::new()));
        let sink = bursts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(b) = parse_burst(&line)
                    && let Ok(mut v) = sink.lock()
                {
                    v.push(b);
                }
            }
        });
        let g = Guest { child, bursts };
        g.wait_bursts(0, 1)?;
        Ok(g)
    }

    /// Wait for `n` bursts that started at or after `since_ns`.
    fn wait_bursts(&self, since_ns: u64, n: usize) -> Result<Vec<Burst>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got: Vec<Burst> = {
                let v = self.bursts.lock().map_err(|_| anyhow!("burst list poisoned"))?;
                v.iter().filter(|b| b.start_ns >= since_ns).copied().collect()
            };
            if got.len() >= n {
                return Ok(got[..n].to_vec());
            }
            if Instant::now() > deadline {
                bail!("the guest made {} of {n} bursts in 120 s", got.len());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Port writes per second over the next `n` bursts: the median burst (one burst slowed by
    /// other work on the machine does not move it).
    fn throughput(&self, n: usize) -> Result<Rate> {
        let b = self.wait_bursts(monotonic_ns(), n)?;
        if b.iter().any(|b| b.cpu_ns == 0 || b.end_ns <= b.start_ns) {
            bail!("a burst of zero length");
        }
        let rate = |f: fn(&Burst) -> u64| {
            median_p99(&mut b.iter().map(|b| b.writes as f64 * 1e9 / f(b) as f64).collect::<Vec<_>>()).0
        };
        Ok(Rate { cpu: rate(|b| b.cpu_ns), wall: rate(|b| b.end_ns - b.start_ns) })
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `burst vcpu=0 n=3 writes=20000 start_ns=.. end_ns=..` (pve-test-guest `-pio-report`).
fn parse_burst(line: &str) -> Option<Burst> {
    let rest = line.strip_prefix("burst ")?;
    let field =
        |k: &str| rest.split_whitespace().find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok());
    Some(Burst {
        writes: field("writes")?,
        start_ns: field("start_ns")?,
        end_ns: field("end_ns")?,
        cpu_ns: field("cpu_ns")?,
    })
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn set_affinity(pid: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t filled with CPU_SET.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Pin this process (and so the daemons it starts) to `cpu`.
fn pin_self(cpu: usize) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!("the ebpf bench needs 2 CPUs (guest and daemon apart); this machine has {cpus}");
    }
    set_affinity(0, cpu).with_context(|| format!("pinning the bench to CPU {cpu}"))
}

// ---- /metrics -----------------------------------------------------------------------------

/// The value of `name{labels}` (every given label must match).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (lbl, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels.iter().all(|(k, v)| lbl.split(',').any(|kv| kv == format!("{k}=\"{v}\""))).then_some(())?;
        value.trim().parse().ok()
    })
}

fn delta(m0: &str, m1: &str, name: &str, program: &str) -> f64 {
    let v = |m: &str| sample(m, name, &[("program", program)]).unwrap_or(0.0);
    v(m1) - v(m0)
}

/// The tracepoint of each named program (the counters' come from `--ebpf-events`).
const PROGRAM_TRACEPOINTS: &[(&str, &str)] = &[
    ("count_userspace_exit", "kvm:kvm_userspace_exit"),
    ("kvm_exit", "kvm:kvm_exit"),
    ("kvm_entry", "kvm:kvm_entry"),
    ("vcpu_wakeup", "kvm:kvm_vcpu_wakeup"),
    ("sched_switch", "sched:sched_switch"),
    ("sched_wakeup", "sched:sched_wakeup"),
    ("sched_wakeup_new", "sched:sched_wakeup_new"),
];

/// Every program the daemon attached, with its tracepoint (from a scrape) and how it is
/// attached (from the kernel: `types`, program name -> BPF program type). The counters
/// (`count_event_<slot>`) take the attached tracepoints of `--ebpf-events` in order, as the
/// loader assigns them, but for those a named program counts already.
fn attached_programs(m: &str, types: &BTreeMap<String, u32>) -> Result<Attached> {
    // The kernel keeps 15 bytes of a program's name.
    let how = |prog: &str| match types.get(&prog[..prog.len().min(15)]) {
        Some(&BPF_PROG_TYPE_RAW_TRACEPOINT) => Ok(Attach::Raw),
        Some(&BPF_PROG_TYPE_TRACEPOINT) => Ok(Attach::Perf),
        other => Err(anyhow!("program {prog}: type {other:?} in the daemon, not a tracepoint")),
    };
    let mut out = Vec::new();
    let mut slot = 0;
    let programs = sample_labels(m, "pve_exporter_ebpf_program_attached", "program");
    // An event whose tracepoint carries an attached named program is counted by that program
    // (the daemon derives it), without a counter program.
    let derived = |ev: &str| {
        PROGRAM_TRACEPOINTS.iter().any(|(p, t)| *t == ev && programs.iter().any(|(q, v)| q == p && *v == 1.0))
    };
    // The family lists events by name, not slot: take them in the default order of
    // `--ebpf-events`, which is how the loader numbers them.
    let events = sample_labels(m, "pve_exporter_ebpf_tracepoint_attached", "event");
    for ev in DEFAULT_EVENTS {
        if events.iter().any(|(e, v)| e == ev && *v == 1.0) && !derived(ev) {
            let prog = format!("count_event_{slot}");
            let h = how(&prog)?;
            out.push((prog, ev.to_string(), h));
            slot += 1;
        }
    }
    for (prog, v) in programs {
        if v != 1.0 {
            continue;
        }
        let tp = PROGRAM_TRACEPOINTS
            .iter()
            .find(|(p, _)| *p == prog)
            .map(|(_, t)| t.to_string())
            .ok_or_else(|| anyhow!("unknown program {prog}: add it to PROGRAM_TRACEPOINTS"))?;
        let h = how(&prog)?;
        out.push((prog, tp, h));
    }
    Ok(out)
}

/// `--ebpf-events`' default, in order.
const DEFAULT_EVENTS: &[&str] = &[
    "kvm:kvm_exit",
    "kvm:kvm_entry",
    "kvm:kvm_pio",
    "kvm:kvm_mmio",
    "kvm:kvm_userspace_exit",
    "kvm:kvm_emulate_insn",
    "kvm:kvm_msr",
    "kvm:kvm_inj_virq",
    "kvm:kvm_vcpu_wakeup",
    "kvm:kvm_halt_poll_ns",
];

/// (label value, sample value) of every sample of `name`.
fn sample_labels(m: &str, name: &str, label: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}{{{label}=\"");
    m.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (v, rest) = rest.split_once('"')?;
            let value = rest.rsplit(' ').next()?.parse().ok()?;
            Some((v.to_string(), value))
        })
        .collect()
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, kernel {}", kernel.trim())
}

// ---- raw BPF: the no-op floor ---------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// _IOW('$', 8, __u32) and _IO('$', 0).
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// `union bpf_attr` as a zeroed buffer of its largest size we use (the kernel accepts a larger
/// attr whose tail is zero).
#[repr(C, align(8))]
struct BpfAttr([u8; 144]);

impl BpfAttr {
    fn new() -> Self {
        Self([0; 144])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) with an attr buffer of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a new fd the kernel just returned to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Turn the kernel's BPF run-time statistics on while the fd lives.
fn enable_stats() -> Result<OwnedFd> {
    let mut a = BpfAttr::new();
    a.u32(0, 0); // BPF_STATS_RUN_TIME
    bpf(BPF_ENABLE_STATS, &mut a).map(owned).context("BPF_ENABLE_STATS")
}

/// A program of two instructions: `r0 = 0; exit`.
fn load_noop(prog_type: u32) -> Result<OwnedFd> {
    let insns: [u64; 2] =
        [u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
    let license = c"GPL";
    let mut a = BpfAttr::new();
    a.u32(0, prog_type).u32(4, 2).u64(8, insns.as_ptr() as u64).u64(16, license.as_ptr() as u64);
    // prog_name at offset 48.
    a.0[48..52].copy_from_slice(b"noop");
    bpf(BPF_PROG_LOAD, &mut a).map(owned).context("loading a no-op BPF program")
}

/// The no-op programs, attached; detached when dropped.
struct Noop {
    /// (key, program fd, attachment fd).
    progs: Vec<(String, OwnedFd, OwnedFd)>,
}

fn noop_key(prog: &str, tp: &str) -> String {
    format!("{prog} {tp}")
}

impl Noop {
    fn attach(attached: &Attached) -> Result<Noop> {
        let mut progs = Vec::new();
        for (prog, tp, how) in attached {
            let (cat, name) = tp.split_once(':').ok_or_else(|| anyhow!("bad tracepoint {tp}"))?;
            let link = match how {
                Attach::Perf => {
                    let p = load_noop(BPF_PROG_TYPE_TRACEPOINT)?;
                    let id = tracepoint_id(cat, name)?;
                    let ev = perf_tracepoint(id).with_context(|| format!("perf_event_open {tp}"))?;
                    // SAFETY: ioctls on the perf event fd we own, with our program fd.
                    unsafe {
                        if libc::ioctl(ev.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, p.as_raw_fd()) != 0
                            || libc::ioctl(ev.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0
                        {
                            return Err(std::io::Error::last_os_error()).with_context(|| format!("attaching to {tp}"));
                        }
                    }
                    (p, ev)
                }
                Attach::Raw => {
                    let p = load_noop(BPF_PROG_TYPE_RAW_TRACEPOINT)?;
                    let cname = CString::new(name)?;
                    let mut a = BpfAttr::new();
                    a.u64(0, cname.as_ptr() as u64).u32(8, p.as_raw_fd() as u32);
                    let l = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut a).map(owned).with_context(|| format!("raw {tp}"))?;
                    (p, l)
                }
            };
            progs.push((noop_key(prog, tp), link.0, link.1));
        }
        Ok(Noop { progs })
    }

    /// key -> (runs, run time ns) from each program's fdinfo.
    fn stats(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let mut out = BTreeMap::new();
        for (key, p, _) in &self.progs {
            let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", p.as_raw_fd()))?;
            let get = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok()).unwrap_or(0);
            out.insert(key.clone(), (get("run_cnt:"), get("run_time_ns:")));
        }
        Ok(out)
    }
}

fn tracefs() -> PathBuf {
    let t = PathBuf::from("/sys/kernel/tracing/events");
    if t.exists() { t } else { PathBuf::from("/sys/kernel/debug/tracing/events") }
}

fn tracepoint_id(cat: &str, name: &str) -> Result<u64> {
    let p = tracefs().join(cat).join(name).join("id");
    fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{}: not a number", p.display()))
}

/// A perf event on tracepoint `id` (all processes, CPU 0: a BPF program on it runs wherever
/// the tracepoint fires).
fn perf_tracepoint(id: u64) -> std::io::Result<OwnedFd> {
    // struct perf_event_attr, PERF_ATTR_SIZE_VER5 (112 bytes): type, size, config, then
    // sample_period and wakeup_events as aya sets them.
    let mut attr = [0u8; 112];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&112u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes());
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes()); // sample_period
    attr[48..52].copy_from_slice(&1u32.to_ne_bytes()); // wakeup_events
    // SAFETY: perf_event_open(2) with an attr of the size it declares.
    let fd = unsafe {
        libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1 as libc::pid_t, 0, -1, PERF_FLAG_FD_CLOEXEC)
    };
    if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(owned(fd)) }
}

/// (id, type, name) of the BPF program `id`.
fn prog_info(id: u32) -> Option<(u32, String)> {
    let mut a = BpfAttr::new();
    a.u32(0, id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut a).map(owned).ok()?;
    // struct bpf_prog_info: type (u32) at 0, name (16 bytes) at 64.
    let mut info = [0u8; 256];
    let mut a = BpfAttr::new();
    a.u32(0, fd.as_raw_fd() as u32).u32(4, info.len() as u32).u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).ok()?;
    let ty = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
    let name = &info[64..80];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(16)]).into_owned();
    Some((ty, name))
}

/// Program name -> BPF program type of every program the process `pid` holds (its fdinfo
/// names each program's id), names cut to 15 bytes as the kernel keeps them.
fn program_types(pid: u32) -> Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for e in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))?.flatten() {
        let Ok(info) = fs::read_to_string(e.path()) else { continue };
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ty, name)) = prog_info(id) {
            out.insert(name, ty);
        }
    }
    Ok(out)
}

/// Tracepoint programs loaded on the host by others (any pve-exporter of a concurrent test,
/// say): they would run on the guest's events in the `none` configuration too.
fn foreign_tracepoint_programs() -> usize {
    let mut n = 0;
    let mut id = 0u32;
    loop {
        let mut a = BpfAttr::new();
        a.u32(0, id);
        if bpf(BPF_PROG_GET_NEXT_ID, &mut a).is_err() {
            return n;
        }
        id = u32::from_ne_bytes([a.0[4], a.0[5], a.0[6], a.0[7]]);
        if let Some((ty, _)) = prog_info(id)
            && (ty == BPF_PROG_TYPE_TRACEPOINT || ty == BPF_PROG_TYPE_RAW_TRACEPOINT)
        {
            n += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_lines() {
        let b = parse_burst("burst vcpu=0 n=3 writes=20000 start_ns=10 end_ns=25 cpu_ns=12").unwrap();
        assert_eq!((b.writes, b.start_ns, b.end_ns, b.cpu_ns), (20000, 10, 25, 12));
        assert!(parse_burst("done 20000").is_none());
    }

    #[test]
    fn samples() {
        let m = "a_total{program=\"x\"} 3\na_total{program=\"y\",k=\"v\"} 4.5\nb 7\n";
        assert_eq!(sample(m, "a_total", &[("program", "y")]), Some(4.5));
        assert_eq!(sample(m, "b", &[]), Some(7.0));
        assert_eq!(sample(m, "a", &[]), None);
        assert_eq!(sample_labels(m, "a_total", "program"), vec![("x".into(), 3.0), ("y".into(), 4.5)]);
    }
}
