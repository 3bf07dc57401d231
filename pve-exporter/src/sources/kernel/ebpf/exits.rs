//! VM exits and exit handling time (kernel side: pve-exporter-ebpf/src/exits.rs, `kvm_exit` and
//! `kvm_entry`): exit reason labels from the tracepoint's print format for the host's ISA (VMX
//! or SVM), and the histogram buckets as exported.

#[allow(unused_imports)]
use super::*;

/// Exit reason names from kvm_exit's print fmt: the kernel's own VMX and SVM tables.
#[derive(Debug, Clone, Default)]
pub struct ExitReasons {
    pub vmx: HashMap<u32, String>,
    pub svm: HashMap<u32, String>,
    /// The isa to assume when records carry none (old kernels): from the CPU vendor.
    pub host_isa: u32,
}

impl ExitReasons {
    /// Tables from kvm_exit's print fmt: `(REC->isa == 1) ? <VMX table> : <SVM table>`.
    pub fn from_print_fmt(print_fmt: &str, host_isa: u32) -> Self {
        let mut tables = tracefs::print_symbolic_tables(print_fmt, "exit_reason").into_iter();
        let mut table = || -> HashMap<u32, String> {
            tables
                .next()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(n, s)| Some((u32::try_from(n).ok()?, s.to_ascii_lowercase())))
                .collect()
        };
        let vmx = table();
        let svm = table();
        Self { vmx, svm, host_isa }
    }

    /// The `reason` label: the kernel's name lowercased, else the number.
    pub fn label(&self, isa: u32, reason: u32) -> String {
        let isa = if isa == ISA_UNKNOWN { self.host_isa } else { isa };
        let table = match isa {
            ISA_VMX => Some(&self.vmx),
            ISA_SVM => Some(&self.svm),
            _ => None,
        };
        table.and_then(|t| t.get(&reason)).cloned().unwrap_or_else(|| reason.to_string())
    }
}

/// The isa of this host's CPU from /proc/cpuinfo's vendor_id.
pub fn host_isa(cpuinfo: &str) -> u32 {
    let vendor = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id").and_then(|r| r.split(':').nth(1)))
        .map(str::trim)
        .unwrap_or("");
    match vendor {
        "GenuineIntel" => ISA_VMX,
        "AuthenticAMD" | "HygonGenuine" => ISA_SVM,
        _ => ISA_UNKNOWN,
    }
}

/// The exported buckets of a BPF histogram: (le in seconds, count in that bucket alone), +Inf
/// last, and the total count. (The encoder makes them cumulative.) The program buckets at the
/// exported resolution already (`pve_exporter_common::hist_bucket`): `le` = 2^10, 2^12, …
/// 2^30 ns, then +Inf.
pub fn exported_buckets(h: &Hist) -> (Vec<(f64, u64)>, u64) {
    let out = h
        .buckets
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let le = if i + 1 < HIST_BUCKETS {
                (1u64 << (HIST_FIRST_BIT + 2 * i as u32)) as f64 / 1e9
            } else {
                f64::INFINITY
            };
            (le, n)
        })
        .collect();
    (out, h.buckets.iter().sum())
}
