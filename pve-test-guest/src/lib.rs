//! A tiny real KVM guest that stands in for a QEMU VM in integration tests and demos.
//!
//! The `pve-test-guest` binary takes a QEMU-like command line (so `/proc/<pid>/cmdline` looks
//! like a Proxmox VM's), creates a KVM VM with `-m` MiB of guest memory and `-smp` vCPUs, and
//! runs each vCPU on its own thread named `CPU <n>/KVM`, as QEMU does with `debug-threads=on`.
//! Each vCPU executes a small real-mode loop of `out` instructions, so that an exporter sees a
//! known, exact number of `kvm_pio` tracepoint events and `KVM_EXIT_IO` exits per vCPU.
//!
//! Guest memory layout: vCPU `i` runs its own copy of the program from the code page at guest
//! physical address `0x1000 * (i + 1)`; nothing else in guest memory is touched.

pub mod container;

use std::convert::Infallible;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

/// Port writes per vCPU per burst when `-pio-writes` is not given.
pub const DEFAULT_PIO_WRITES: u64 = 1000;
/// I/O port written when `-pio-port` is not given.
pub const DEFAULT_PIO_PORT: u16 = 0x10;
/// Guest memory when `-m` is not given (QEMU's default).
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Largest `-smp`: each vCPU's code page must be addressable from real mode (below 1 MiB, with
/// CS selector = page >> 4), and page 0 is left unused.
pub const MAX_VCPUS: u32 = 255;

const PAGE_SIZE: u64 = 0x1000;
const MIB: u64 = 1 << 20;

/// What `pve-test-guest` was asked to do; see [`parse_args`] for the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// `-id`: the Proxmox VM id (the Proxmox QEMU patch's `-id` option).
    pub vmid: Option<u32>,
    /// `-name`: the VM name (`guest=` / first element of the option value).
    pub name: Option<String>,
    /// `-smp`: number of vCPUs.
    pub vcpus: u32,
    /// `-m`: guest memory in MiB.
    pub mem_mib: u64,
    /// `-cpu`: the CPU model string, as given (informational only).
    pub cpu: Option<String>,
    /// `-pio-writes`: `out` instructions each vCPU executes per burst.
    pub pio_writes: u64,
    /// `-pio-port`: the I/O port written.
    pub pio_port: u16,
    /// `-pio-interval-ms`: 0 = a single burst, then idle; otherwise a burst every interval.
    pub pio_interval_ms: u64,
    /// `-ready-file`: where to also write the `done <total>` line after the first burst.
    pub ready_file: Option<PathBuf>,
    /// `-pio-report` (a flag): print a `burst ...` line with the burst's CLOCK_MONOTONIC start
    /// and end for every burst of every vCPU, so a benchmark can time exits without the
    /// process start-up (see [`burst_line`]).
    pub pio_report: bool,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            vmid: None,
            name: None,
            vcpus: 1,
            mem_mib: DEFAULT_MEM_MIB,
            cpu: None,
            pio_writes: DEFAULT_PIO_WRITES,
            pio_port: DEFAULT_PIO_PORT,
            pio_interval_ms: 0,
            ready_file: None,
            pio_report: false,
        }
    }
}

impl GuestConfig {
    /// Port writes of one burst over all vCPUs (what the `done` line reports).
    ///
    /// [`parse_args`] guarantees this does not overflow; saturates for hand-built configs.
    #[must_use]
    pub fn writes_per_burst(&self) -> u64 {
        self.pio_writes.saturating_mul(u64::from(self.vcpus))
    }
}

/// Parses the command line (without the program name, i.e. `std::env::args().skip(1)`).
///
/// Options (a leading `--` is accepted like `-`, as QEMU does):
/// - `-id <vmid>`
/// - `-name <name>[,debug-threads=on|off][,...]` (or `guest=<name>,...`)
/// - `-smp <n>[,sockets=..,cores=..,maxcpus=..]` (or `cpus=<n>`; without a count, the product
///   of `sockets`, `dies`, `clusters`, `cores` and `threads`), 1..=[`MAX_VCPUS`], default 1
/// - `-m <MiB>` (also `<n>M`, `<n>G`, `<n>T`, `size=<..>,...`), default [`DEFAULT_MEM_MIB`]
/// - `-cpu <model>[,...]`
/// - `-pio-writes <N>`, default [`DEFAULT_PIO_WRITES`]
/// - `-pio-port <port>` (decimal or `0x` hex), default [`DEFAULT_PIO_PORT`]
/// - `-pio-interval-ms <ms>`, default 0 (one burst only)
/// - `-ready-file <path>`
/// - `-pio-report` (a flag, no value): a timed line per burst, see [`burst_line`]
///
/// Any other option is accepted and ignored so callers can add realistic QEMU options: it takes
/// the following argument as its value unless that argument starts with `-` (then it is a flag).
/// Arguments that are not options (e.g. a QEMU disk image) are ignored too.
///
/// # Errors
///
/// A message naming the option, for a missing value, a malformed or out-of-range number, an
/// empty name/model/path, or too little memory for the vCPUs' code pages. Never panics.
pub fn parse_args(args: &[String]) -> Result<GuestConfig, String> {
    let mut cfg = GuestConfig::default();
    let mut args = args.iter().peekable();
    while let Some(arg) = args.next() {
        let Some(opt) = option_name(arg) else {
            continue;
        };
        match opt {
            "id" => cfg.vmid = Some(parse_num(opt, value_of(opt, &mut args)?)?),
            "name" => cfg.name = Some(parse_name(value_of(opt, &mut args)?)?),
            "smp" => cfg.vcpus = parse_smp(value_of(opt, &mut args)?)?,
            "m" => cfg.mem_mib = parse_mem(value_of(opt, &mut args)?)?,
            "cpu" => {
                let value = value_of(opt, &mut args)?;
                if value.is_empty() {
                    return Err("-cpu: empty CPU model".into());
                }
                cfg.cpu = Some(value.to_string());
            }
            "pio-writes" => cfg.pio_writes = parse_num(opt, value_of(opt, &mut args)?)?,
            "pio-port" => cfg.pio_port = parse_port(value_of(opt, &mut args)?)?,
            "pio-interval-ms" => {
                cfg.pio_interval_ms = parse_num(opt, value_of(opt, &mut args)?)?;
            }
            "ready-file" => {
                let value = value_of(opt, &mut args)?;
                if value.is_empty() {
                    return Err("-ready-file: empty path".into());
                }
                cfg.ready_file = Some(PathBuf::from(value));
            }
            "pio-report" => cfg.pio_report = true,
            _ => {
                // Unknown option. Heuristic: its value, if any, never starts with '-' in
                // practice; otherwise it is a flag.
                args.next_if(|value| !value.starts_with('-'));
            }
        }
    }

    // Every vCPU needs its own code page below the end of guest memory (see the module docs).
    let needed = (u64::from(cfg.vcpus) + 1) * PAGE_SIZE;
    if cfg.mem_mib.checked_mul(MIB).is_none_or(|bytes| bytes < needed) {
        return Err(format!(
            "-m {} MiB: must be at least {needed} bytes for {} vCPUs, and at most {} MiB",
            cfg.mem_mib,
            cfg.vcpus,
            u64::MAX / MIB
        ));
    }
    if cfg.pio_writes.checked_mul(u64::from(cfg.vcpus)).is_none() {
        return Err(format!("-pio-writes {}: total over {} vCPUs overflows", cfg.pio_writes, cfg.vcpus));
    }
    Ok(cfg)
}

/// The value of known option `opt`: the next argument, whatever it looks like.
fn value_of<'a>(opt: &str, args: &mut impl Iterator<Item = &'a String>) -> Result<&'a str, String> {
    args.next().map(String::as_str).ok_or_else(|| format!("option -{opt} needs a value"))
}

/// `-foo` or `--foo` -> `foo`; anything else (including `-` and `--`) is not an option.
fn option_name(arg: &str) -> Option<&str> {
    let name = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    (!name.is_empty()).then_some(name)
}

fn parse_num<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, String> {
    // FromStr for integers accepts a leading '+'; QEMU does not, and neither do we.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Only fails on overflow now.
        value.parse().map_err(|_| format!("-{what}: number '{value}' too large"))
    } else {
        Err(format!("-{what}: invalid number '{value}'"))
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    let hex = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X"));
    match hex {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u16::from_str_radix(digits, 16).map_err(|_| format!("-pio-port: port '{value}' out of range"))
        }
        Some(_) => Err(format!("-pio-port: invalid port '{value}'")),
        None => parse_num("pio-port", value),
    }
}

/// Splits a QEMU key=value option list. The first element may omit its key (`implied`).
/// Returns (key, value) pairs; later elements without `=` are flags and get an empty value.
fn key_values<'a>(value: &'a str, implied: &'a str) -> Vec<(&'a str, &'a str)> {
    value
        .split(',')
        .enumerate()
        .map(|(i, part)| match part.split_once('=') {
            Some((key, val)) => (key, val),
            None if i == 0 => (implied, part),
            None => (part, ""),
        })
        .collect()
}

fn parse_name(value: &str) -> Result<String, String> {
    let mut name = None;
    for (key, val) in key_values(value, "guest") {
        match key {
            "guest" => name = Some(val),
            "debug-threads" if !matches!(val, "on" | "off") => {
                return Err(format!("-name: debug-threads must be on or off, not '{val}'"));
            }
            // debug-threads=on|off (vCPU threads are always named), process=, ...: ignored.
            _ => {}
        }
    }
    match name {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(format!("-name '{value}': missing VM name")),
    }
}

fn parse_smp(value: &str) -> Result<u32, String> {
    let mut cpus = None;
    let mut topology: Option<u32> = None;
    for (key, val) in key_values(value, "cpus") {
        match key {
            "cpus" => cpus = Some(parse_num::<u32>("smp", val)?),
            "sockets" | "dies" | "clusters" | "cores" | "threads" => {
                let n = parse_num::<u32>("smp", val)?;
                topology = Some(
                    topology
                        .unwrap_or(1)
                        .checked_mul(n)
                        .ok_or_else(|| format!("-smp '{value}': topology too large"))?,
                );
            }
            "maxcpus" | "books" | "drawers" => {
                parse_num::<u32>("smp", val)?;
            }
            _ => {}
        }
    }
    let cpus = cpus.or(topology).unwrap_or(1);
    if !(1..=MAX_VCPUS).contains(&cpus) {
        return Err(format!("-smp '{value}': vCPU count {cpus} not in 1..={MAX_VCPUS}"));
    }
    Ok(cpus)
}

fn parse_mem(value: &str) -> Result<u64, String> {
    // slots= and maxmem= are ignored (no memory hotplug here).
    let size = key_values(value, "size")
        .into_iter()
        .filter_map(|(key, val)| (key == "size").then_some(val))
        .next_back()
        .ok_or_else(|| format!("-m '{value}': missing size"))?;
    let (digits, factor) = match size.as_bytes().last() {
        Some(b'M' | b'm') => (&size[..size.len() - 1], 1),
        Some(b'G' | b'g') => (&size[..size.len() - 1], 1 << 10),
        Some(b'T' | b't') => (&size[..size.len() - 1], 1 << 20),
        _ => (size, 1),
    };
    let mib =
        parse_num::<u64>("m", digits)?.checked_mul(factor).ok_or_else(|| format!("-m '{value}': size too large"))?;
    if mib == 0 {
        return Err(format!("-m '{value}': size must not be 0"));
    }
    Ok(mib)
}

/// Runs the guest as described in the module docs: prints `started pid=<pid>`, runs the first
/// burst on every vCPU, prints (and writes to the ready file) `done <total>`, then keeps the
/// vCPU threads alive (bursting again every `pio_interval_ms` if non-zero) until the process is
/// killed. Meant to be the whole of the binary's `main`: it also resets the SIGINT/SIGTERM
/// dispositions of the process to the default.
///
/// # Errors
///
/// Returns only on failure, with context: `/dev/kvm` missing or not KVM, a KVM ioctl failing,
/// the guest doing anything but the expected `out`s and `hlt` (or a different number of them),
/// or stdout / the ready file not being writable.
pub fn run(cfg: &GuestConfig) -> Result<Infallible> {
    let mem_bytes = cfg
        .mem_mib
        .checked_mul(MIB)
        .and_then(|b| usize::try_from(b).ok())
        .with_context(|| format!("guest memory of {} MiB too large", cfg.mem_mib))?;

    reset_exit_signals()?;
    let kvm = Kvm::new().context("cannot open /dev/kvm")?;
    let api = kvm.get_api_version();
    ensure!(
        api == kvm_bindings::KVM_API_VERSION as i32,
        "/dev/kvm: KVM_GET_API_VERSION returned {api}, expected {}",
        kvm_bindings::KVM_API_VERSION
    );
    // Declared before `vm` so it is dropped after it; vCPUs hold their own reference.
    let mem = Arc::new(GuestMemory::new(mem_bytes)?);
    let vm = kvm.create_vm().context("KVM_CREATE_VM failed")?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem.len as u64,
        userspace_addr: mem.ptr.as_ptr() as u64,
    };
    // SAFETY: the region is exactly our own live anonymous mapping, the only memory slot. The
    // mapping outlives the VM: every vCPU (which keeps the VM alive in the kernel) holds an
    // `Arc` of it, dropped after its fd, and `mem` is dropped after `vm`.
    unsafe { vm.set_user_memory_region(region) }
        .with_context(|| format!("KVM_SET_USER_MEMORY_REGION of {} MiB failed", cfg.mem_mib))?;

    let mut pages = CodePage::split(&mem, cfg.vcpus)?.into_iter();
    let mut vcpus = Vec::new();
    for index in 0..cfg.vcpus {
        let page = pages.next().context("missing code page")?;
        let fd = vm.create_vcpu(u64::from(index)).with_context(|| format!("KVM_CREATE_VCPU {index} failed"))?;
        vcpus.push(Vcpu::new(index, fd, page, cfg.pio_port)?);
    }

    eprintln!(
        "pve-test-guest: vmid={} name={} vcpus={} mem={}MiB cpu={} pio-writes={} port={:#x} \
         interval={}ms",
        cfg.vmid.map_or("-".into(), |id| id.to_string()),
        cfg.name.as_deref().unwrap_or("-"),
        cfg.vcpus,
        cfg.mem_mib,
        cfg.cpu.as_deref().unwrap_or("-"),
        cfg.pio_writes,
        cfg.pio_port,
        cfg.pio_interval_ms
    );
    report(&format!("started pid={}\n", std::process::id()), None)?;

    let (tx, rx) = mpsc::channel();
    for vcpu in vcpus {
        let tx = tx.clone();
        let (writes, interval_ms) = (cfg.pio_writes, cfg.pio_interval_ms);
        thread::Builder::new()
            // Like QEMU with debug-threads=on; fits the kernel's 15-byte comm up to "CPU 254/KVM".
            .name(format!("CPU {}/KVM", vcpu.index))
            .spawn(move || vcpu.run_forever(writes, interval_ms, &tx))
            .context("cannot spawn vCPU thread")?;
    }
    drop(tx);

    let mut first_done = vec![false; cfg.vcpus as usize];
    let mut total = 0u64;
    while first_done.iter().any(|done| !done) {
        let event = recv_event(&rx)?;
        if cfg.pio_report {
            report(&burst_line(&event), None)?;
        }
        if event.burst == 0 {
            first_done[event.index as usize] = true;
            total += event.writes;
        }
    }
    ensure!(
        total == cfg.writes_per_burst(),
        "first burst made {total} port writes, expected {}",
        cfg.writes_per_burst()
    );
    report(&format!("done {total}\n"), cfg.ready_file.as_deref())?;

    // Keep the process (and the vCPU threads) alive; fail if a later burst fails.
    loop {
        let event = recv_event(&rx)?;
        if cfg.pio_report {
            report(&burst_line(&event), None)?;
        }
    }
}

/// The `-pio-report` line of a finished burst:
/// `burst vcpu=<index> n=<burst> writes=<writes> start_ns=<t0> end_ns=<t1> cpu_ns=<c>`: start
/// and end from CLOCK_MONOTONIC (comparable with any other process's clock_gettime on this
/// host), and the CPU time the vCPU thread used for the burst (user and system: the exits, and
/// whatever runs in the thread's context on them, BPF programs included), which other load on
/// the machine does not stretch as it does the wall time.
fn burst_line(b: &BurstDone) -> String {
    format!(
        "burst vcpu={} n={} writes={} start_ns={} end_ns={} cpu_ns={}\n",
        b.index, b.burst, b.writes, b.start_ns, b.end_ns, b.cpu_ns
    )
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill; both clocks used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// CLOCK_MONOTONIC in nanoseconds.
fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread in nanoseconds.
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Restores the default disposition (terminate) of SIGINT and SIGTERM: a shell starts background
/// jobs with SIGINT ignored, and the guest must still stop on it like QEMU does.
fn reset_exit_signals() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs the default disposition; no handler code is involved.
        if unsafe { libc::signal(signal, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot reset the disposition of signal {signal}"));
        }
    }
    Ok(())
}

/// Prints `line` to stdout (flushed) and, if given, atomically writes it to `file`.
fn report(line: &str, file: Option<&Path>) -> Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(line.as_bytes()).and_then(|()| stdout.flush()).context("cannot write to stdout")?;
    if let Some(path) = file {
        write_atomically(path, line)?;
    }
    Ok(())
}

/// Writes via a temporary file in the same directory and a rename, so a reader polling for
/// `path` never sees a partial file.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let mut tmp_name: OsString =
        path.file_name().with_context(|| format!("ready file {} has no file name", path.display()))?.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    if let Err(err) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()));
    }
    Ok(())
}

/// What a vCPU thread tells the main thread: burst number `burst` (0-based) of vCPU `index`
/// finished with exactly `writes` port writes.
struct BurstDone {
    index: u32,
    burst: u64,
    writes: u64,
    /// CLOCK_MONOTONIC when the burst started and ended, and the thread's CPU time for it
    /// (for `-pio-report`).
    start_ns: u64,
    end_ns: u64,
    cpu_ns: u64,
}

/// A vCPU thread's message: a finished burst, or the error that ended the thread.
type Message = Result<BurstDone>;

fn recv_event(rx: &mpsc::Receiver<Message>) -> Result<BurstDone> {
    rx.recv().map_err(|_| anyhow!("all vCPU threads exited"))?
}

/// An anonymous private mapping used as guest RAM. Only the code pages are ever touched, so the
/// resident size stays small while the virtual size reflects `-m`.
struct GuestMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this struct; Rust code only writes it through
// `CodePage`s, which cover disjoint ranges (see there).
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    fn new(len: usize) -> Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).with_context(|| format!("cannot map {len} bytes of guest memory"));
        }
        let ptr = NonNull::new(ptr.cast()).context("mmap returned NULL")?;
        Ok(GuestMemory { ptr, len })
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Exclusive write access to one vCPU's code page in guest memory.
struct CodePage {
    mem: Arc<GuestMemory>,
    gpa: u64,
}

impl CodePage {
    /// The code pages of vCPUs `0..vcpus`, at guest physical `0x1000 * (index + 1)`. Called once,
    /// so no two `CodePage`s overlap.
    fn split(mem: &Arc<GuestMemory>, vcpus: u32) -> Result<Vec<CodePage>> {
        (0..vcpus)
            .map(|index| {
                let gpa = PAGE_SIZE * (u64::from(index) + 1);
                ensure!(gpa + PAGE_SIZE <= mem.len as u64, "guest memory too small for code page of vCPU {index}");
                Ok(CodePage { mem: Arc::clone(mem), gpa })
            })
            .collect()
    }

    fn write(&mut self, code: &[u8; CODE_LEN]) {
        // SAFETY: `split` checked the page lies within the mapping (the code is far smaller than
        // a page), and this `CodePage` is the only writer of its page, so no other thread writes
        // these bytes concurrently. (The guest reads them only while this vCPU runs, i.e. not
        // during this call, which is made from the thread that runs it.)
        unsafe {
            let dst = self.mem.ptr.as_ptr().add(self.gpa as usize);
            std::ptr::copy_nonoverlapping(code.as_ptr(), dst, code.len());
        }
    }
}

/// The guest program for one chunk, in 16-bit real mode:
///
/// ```text
///     mov cx, count
///     mov dx, port
/// l:  out dx, al
///     dec cx
///     jnz l
///     hlt
/// ```
///
/// `count` must be non-zero (0 would loop 65536 times).
fn guest_code(count: u16, port: u16) -> [u8; CODE_LEN] {
    let [c0, c1] = count.to_le_bytes();
    let [p0, p1] = port.to_le_bytes();
    #[rustfmt::skip]
    let code = [
        0xb9, c0, c1, //   mov cx, count
        0xba, p0, p1, //   mov dx, port
        0xee,         // l: out dx, al
        0x49,         //   dec cx
        0x75, 0xfc,   //   jnz l (rel8 -4: back to the out)
        0xf4,         //   hlt
    ];
    code
}

/// Length of the program from [`guest_code`].
const CODE_LEN: usize = 11;

/// Offset of the `hlt` in [`guest_code`]; RIP is one past it after the vCPU halts.
const HLT_OFFSET: u64 = 10;

struct Vcpu {
    index: u32,
    // Declared before `page` so the vCPU fd is closed before the guest memory reference drops.
    fd: VcpuFd,
    page: CodePage,
    port: u16,
    /// The loop count currently in the code page, to rewrite it only when it changes.
    loaded_count: Option<u16>,
}

impl Vcpu {
    fn new(index: u32, fd: VcpuFd, page: CodePage, port: u16) -> Result<Self> {
        // Real mode (the reset state) with CS pointing at the code page: selector = base >> 4 as
        // real mode requires, so the program starts at IP 0 (the page is at most 0xff000).
        let mut sregs = fd.get_sregs().with_context(|| format!("KVM_GET_SREGS on vCPU {index} failed"))?;
        sregs.cs.base = page.gpa;
        sregs.cs.selector = u16::try_from(page.gpa >> 4).context("code page above 1 MiB")?;
        fd.set_sregs(&sregs).with_context(|| format!("KVM_SET_SREGS on vCPU {index} failed"))?;
        Ok(Vcpu { index, fd, page, port, loaded_count: None })
    }

    /// The vCPU thread's body: bursts of `writes` port writes, reported on `tx`, every
    /// `interval_ms` (or once, if 0), idling in between and afterwards.
    fn run_forever(mut self, writes: u64, interval_ms: u64, tx: &mpsc::Sender<Message>) {
        for burst in 0.. {
            let (start_ns, start_cpu) = (monotonic_ns(), thread_cpu_ns());
            let result =
                self.run_burst(writes).with_context(|| format!("vCPU {} burst {burst}", self.index)).map(|writes| {
                    BurstDone {
                        index: self.index,
                        burst,
                        writes,
                        start_ns,
                        end_ns: monotonic_ns(),
                        cpu_ns: thread_cpu_ns().saturating_sub(start_cpu),
                    }
                });
            let failed = result.is_err();
            // If the main thread is gone the process is exiting anyway.
            if tx.send(result).is_err() || failed {
                return;
            }
            if interval_ms == 0 {
                break;
            }
            thread::sleep(Duration::from_millis(interval_ms));
        }
        // Stay alive (an exporter must still see the vCPU thread) until the process is killed.
        loop {
            thread::park();
        }
    }

    /// Runs `writes` port writes in chunks of at most 65535 (the 16-bit loop counter) and
    /// returns how many the guest made, which is `writes` or an error.
    fn run_burst(&mut self, writes: u64) -> Result<u64> {
        let mut done = 0;
        while done < writes {
            let chunk = u16::try_from(writes - done).unwrap_or(u16::MAX);
            let outs = self.run_chunk(chunk)?;
            ensure!(outs == u64::from(chunk), "guest made {outs} port writes, expected {chunk}");
            done += outs;
        }
        Ok(done)
    }

    /// Runs the guest program once with loop count `count` (non-zero) until it halts and
    /// returns the number of `out` exits seen.
    fn run_chunk(&mut self, count: u16) -> Result<u64> {
        if self.loaded_count != Some(count) {
            self.page.write(&guest_code(count, self.port));
            self.loaded_count = Some(count);
        }
        let index = self.index;
        let mut regs = self.fd.get_regs().context("KVM_GET_REGS failed")?;
        regs.rip = 0;
        regs.rflags = 2; // only the reserved, always-set bit 1: interrupts off
        regs.rax = u64::from(index); // the byte written: tells vCPUs apart in a trace
        self.fd.set_regs(&regs).context("KVM_SET_REGS failed")?;

        let mut outs = 0u64;
        loop {
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    ensure!(
                        port == self.port && data.len() == 1,
                        "unexpected out of {} bytes to port {port:#x}",
                        data.len()
                    );
                    outs += 1;
                    // Stop a runaway guest instead of looping forever.
                    ensure!(outs <= u64::from(count), "more than {count} port writes");
                }
                Ok(VcpuExit::Hlt) => break,
                Ok(exit) => bail!("unexpected vCPU exit {exit:?}"),
                // A signal interrupted KVM_RUN before the guest was entered: just retry.
                Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => {}
                Err(e) => return Err(e).context("KVM_RUN failed"),
            }
        }

        // Cross-check with the guest's own counter: it halted at the end of the program with CX
        // counted down to 0, i.e. it executed exactly `count` outs, as many as we saw.
        let regs = self.fd.get_regs().context("KVM_GET_REGS failed")?;
        ensure!(
            regs.rip == HLT_OFFSET + 1 && regs.rcx & 0xffff == 0,
            "guest halted at IP {:#x} with CX {:#x}, expected IP {:#x} and CX 0",
            regs.rip,
            regs.rcx & 0xffff,
            HLT_OFFSET + 1
        );
        Ok(outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<GuestConfig, String> {
        let args: Vec<String> = args.split_whitespace().map(String::from).collect();
        parse_args(&args)
    }

    #[test]
    fn defaults() {
        assert_eq!(parse("").unwrap(), GuestConfig::default());
        let cfg = GuestConfig::default();
        assert_eq!(cfg.vcpus, 1);
        assert_eq!(cfg.mem_mib, 128);
        assert_eq!(cfg.pio_writes, 1000);
        assert_eq!(cfg.pio_port, 0x10);
        assert_eq!(cfg.pio_interval_ms, 0);
    }

    #[test]
    fn full_proxmox_like_command_line() {
        let cfg = parse(
            "-id 100 -name demo,debug-threads=on -no-shutdown \
             -chardev socket,id=qmp,path=/var/run/qemu-server/100.qmp,server=on,wait=off \
             -mon chardev=qmp,mode=control -pidfile /var/run/qemu-server/100.pid -daemonize \
             -smp 4,sockets=1,cores=4,maxcpus=4 -nodefaults -vnc unix:/var/run/100.vnc,password=on \
             -cpu kvm64,enforce,+kvm_pv_eoi,+kvm_pv_unhalt,+lahf_lm,+sep -m 2048 \
             -machine type=pc-i440fx-9.0+pve0 -pio-writes 70000 -pio-port 0x3f8 \
             -pio-interval-ms 500 -ready-file /tmp/ready -pio-report",
        )
        .unwrap();
        assert_eq!(
            cfg,
            GuestConfig {
                vmid: Some(100),
                name: Some("demo".into()),
                vcpus: 4,
                mem_mib: 2048,
                cpu: Some("kvm64,enforce,+kvm_pv_eoi,+kvm_pv_unhalt,+lahf_lm,+sep".into()),
                pio_writes: 70000,
                pio_port: 0x3f8,
                pio_interval_ms: 500,
                ready_file: Some(PathBuf::from("/tmp/ready")),
                pio_report: true,
            }
        );
        assert_eq!(cfg.writes_per_burst(), 280_000);
    }

    #[test]
    fn unknown_options_and_flags_are_ignored() {
        let cfg = parse("-nodefaults -machine q35 -S -enable-kvm -id 7 --daemonize disk.img -smp 2").unwrap();
        assert_eq!(cfg.vmid, Some(7));
        assert_eq!(cfg.vcpus, 2);
        // An unknown flag right before a known option does not swallow it.
        let cfg = parse("-no-hpet -m 64").unwrap();
        assert_eq!(cfg.mem_mib, 64);
        // An unknown option at the very end, with or without a value.
        assert!(parse("-id 1 -machine").is_ok());
        assert!(parse("-id 1 -machine q35").is_ok());
        // "-" and "--" are not options.
        assert_eq!(parse("- -- -id 3").unwrap().vmid, Some(3));
    }

    #[test]
    fn double_dash_and_last_wins() {
        let cfg = parse("--id 5 -id 6 --pio-writes 3").unwrap();
        assert_eq!(cfg.vmid, Some(6));
        assert_eq!(cfg.pio_writes, 3);
    }

    #[test]
    fn name_forms() {
        assert_eq!(parse("-name demo").unwrap().name.as_deref(), Some("demo"));
        assert_eq!(parse("-name guest=vm1,debug-threads=on").unwrap().name.as_deref(), Some("vm1"));
        assert_eq!(parse("-name vm2,debug-threads=off,process=x").unwrap().name.as_deref(), Some("vm2"));
        assert!(parse("-name ,debug-threads=on").is_err());
        assert!(parse("-name debug-threads=on").is_err());
        assert!(parse("-name demo,debug-threads=yes").is_err());
    }

    #[test]
    fn smp_forms() {
        assert_eq!(parse("-smp 3").unwrap().vcpus, 3);
        assert_eq!(parse("-smp cpus=5,maxcpus=8").unwrap().vcpus, 5);
        assert_eq!(parse("-smp sockets=2,cores=3,threads=2").unwrap().vcpus, 12);
        assert_eq!(parse("-smp 255").unwrap().vcpus, 255);
        assert!(parse("-smp 0").is_err());
        assert!(parse("-smp 256").is_err());
        assert!(parse("-smp four").is_err());
        assert!(parse("-smp 2,cores=x").is_err());
        assert!(parse("-smp sockets=65536,cores=65536").is_err());
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse("-m 512").unwrap().mem_mib, 512);
        assert_eq!(parse("-m 512M").unwrap().mem_mib, 512);
        assert_eq!(parse("-m 2G").unwrap().mem_mib, 2048);
        assert_eq!(parse("-m 1T").unwrap().mem_mib, 1 << 20);
        assert_eq!(parse("-m size=4096,slots=255,maxmem=524288M").unwrap().mem_mib, 4096);
        assert!(parse("-m 0").is_err());
        assert!(parse("-m G").is_err());
        assert!(parse("-m 1.5G").is_err());
        assert!(parse("-m 18446744073709551615").is_err());
        assert!(parse("-m 99999999999999999999").is_err());
        assert!(parse("-m slots=2").is_err());
        // Every vCPU needs a 4 KiB code page below the end of memory.
        assert!(parse("-m 1 -smp 255").is_ok());
    }

    #[test]
    fn pio_options() {
        assert_eq!(parse("-pio-port 0x3F8").unwrap().pio_port, 0x3f8);
        assert_eq!(parse("-pio-port 80").unwrap().pio_port, 80);
        assert_eq!(parse("-pio-port 0xffff").unwrap().pio_port, 0xffff);
        assert!(parse("-pio-port 0x10000").is_err());
        assert!(parse("-pio-port 65536").is_err());
        assert!(parse("-pio-port 0x").is_err());
        assert!(parse("-pio-port 0xzz").is_err());
        assert!(parse("-pio-port -1").is_err());
        assert_eq!(parse("-pio-writes 0").unwrap().pio_writes, 0);
        assert!(parse("-pio-writes 1e3").is_err());
        assert!(parse("-pio-writes +5").is_err());
        assert!(parse("-pio-writes -5").is_err());
        assert!(parse("-pio-interval-ms soon").is_err());
        assert!(parse("-smp 2 -pio-writes 18446744073709551615").is_err());
        assert!(parse("-id 4294967296").is_err());
        assert!(parse("-id abc").is_err());
    }

    #[test]
    fn missing_values() {
        for opt in ["-id", "-name", "-smp", "-m", "-cpu", "-pio-writes", "-pio-port", "-pio-interval-ms", "-ready-file"]
        {
            let err = parse(&format!("-id 1 {opt}")).unwrap_err();
            assert!(err.contains("needs a value"), "{opt}: {err}");
        }
        // A known option takes the next argument even if it looks like an option...
        assert!(parse("-pio-writes -machine q35").is_err());
        // ...and empty values are rejected.
        let empty = |opt: &str| parse_args(&[opt.to_string(), String::new()]);
        for opt in ["-id", "-name", "-smp", "-m", "-cpu", "-pio-writes", "-pio-port", "-ready-file"] {
            assert!(empty(opt).is_err(), "{opt} with empty value");
        }
    }

    #[test]
    fn burst_lines() {
        let b = BurstDone { index: 1, burst: 2, writes: 3, start_ns: 4, end_ns: 5, cpu_ns: 6 };
        assert_eq!(burst_line(&b), "burst vcpu=1 n=2 writes=3 start_ns=4 end_ns=5 cpu_ns=6\n");
        assert!(!parse("-id 1").unwrap().pio_report);
        // A flag: the next option is not taken as its value.
        let cfg = parse("-pio-report -id 9").unwrap();
        assert!(cfg.pio_report);
        assert_eq!(cfg.vmid, Some(9));
    }

    #[test]
    fn guest_code_bytes() {
        let code = guest_code(0x1234, 0x3f8);
        assert_eq!(code, [0xb9, 0x34, 0x12, 0xba, 0xf8, 0x03, 0xee, 0x49, 0x75, 0xfc, 0xf4]);
        assert_eq!(code[HLT_OFFSET as usize], 0xf4);
        // jnz's target (offset after the jump + rel8) is the out.
        assert_eq!((HLT_OFFSET as i64 + i64::from(code[9] as i8)) as usize, 6);
    }
}
