//! Pressure stall information (PSI) of each running VM, from its cgroup v2 scope
//! `/sys/fs/cgroup/qemu.slice/<vmid>.scope/{cpu,memory,io}.pressure`: the files PVE's own API
//! reads for `pressure{cpu,memory,io}{some,full}` of `/nodes/<node>/qemu`.
//!
//! A file reads
//!
//! ```text
//! some avg10=1.23 avg60=0.80 avg300=0.25 total=123456789
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! (percentages of wall time over the last 10 s, 60 s and 300 s, and the total stall time in
//! µs). PVE reports `avg10` (qemu-server's `vmstatus`), so the ratios here are `avg10 / 100`.

use std::io;

use crate::{
    heldfile::HeldFiles,
    host::HostRoot,
    sources::{
        error::{ParseError, SourceError},
        proc::process::utf8,
    },
};

/// One line of a pressure file.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Averages {
    /// Percentages (0..=100) of the last 10, 60 and 300 seconds.
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Total stall time in microseconds.
    pub total_us: u64,
}

/// A pressure file: `some` is always there; `full` is missing in `cpu.pressure` of kernels
/// before 5.13.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pressure {
    pub some: Option<Averages>,
    pub full: Option<Averages>,
}

/// Parse a pressure file. Unknown line kinds and keys are ignored (the kernel may add some);
/// a known key with a bad value, or a file without a `some` line, is an error.
pub fn parse_pressure(text: &str) -> Result<Pressure, ParseError> {
    let mut p = Pressure::default();
    for (n, line) in text.lines().enumerate() {
        let bad = |msg: String| ParseError::new("pressure", msg).at(n + 1);
        let mut words = line.split_whitespace();
        let slot = match words.next() {
            Some("some") => &mut p.some,
            Some("full") => &mut p.full,
            _ => continue,
        };
        let mut a = Averages::default();
        let mut seen = 0;
        for w in words {
            let Some((k, v)) = w.split_once('=') else { continue };
            let pct = |v: &str| -> Result<f64, ParseError> {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && (0.0..=100.0).contains(x))
                    .ok_or_else(|| bad(format!("bad {k} {v:?} in {line:?}")))
            };
            match k {
                "avg10" => a.avg10 = pct(v)?,
                "avg60" => a.avg60 = pct(v)?,
                "avg300" => a.avg300 = pct(v)?,
                "total" => a.total_us = v.parse().map_err(|_| bad(format!("bad total {v:?} in {line:?}")))?,
                _ => continue,
            }
            seen += 1;
        }
        if seen < 4 {
            return Err(bad(format!("incomplete pressure line {line:?}")));
        }
        *slot = Some(a);
    }
    if p.some.is_none() {
        return Err(ParseError::new("pressure", "no \"some\" line"));
    }
    Ok(p)
}

/// The six pressure ratios of a VM, in the order of [`RESOURCES`] × (some, full).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmPressure {
    /// The VM's id as the `id` label has it after `qemu/`: the vmid for PVE (and the API), the
    /// VM source's id for libvirt and plain QEMU.
    pub id: String,
    /// cpu some, cpu full, memory some, memory full, io some, io full; ratios 0..=1. None when
    /// not known (the local file is missing).
    pub ratios: [Option<f64>; 6],
}

/// The resources with a pressure file, in the order of [`VmPressure::ratios`].
pub const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// The two ratios (some, full) of one resource from its file, as PVE's API computes them:
/// `avg10 / 100`, and a missing `full` line counts as 0 (it does in PVE too).
pub fn ratios(p: &Pressure) -> [Option<f64>; 2] {
    let r = |a: Option<Averages>| a.map(|a| a.avg10 / 100.0);
    [r(p.some), Some(r(p.full).unwrap_or(0.0))]
}

/// A process's cgroup2 path: the `0::<path>` line of `/proc/<pid>/cgroup` (on a hybrid host
/// the other lines are the v1 hierarchies'). None without one (a pure v1 host).
pub fn cgroup2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::trim).filter(|p| p.starts_with('/'))
}

/// Read the three pressure files of cgroup directory `dir` (a host path: the cgroup2 mount
/// joined with the VM process's cgroup2 path), through the files `held` keeps open for `key`
/// (slot i: `RESOURCES[i]`). A file that cannot be read or parsed leaves its two ratios
/// unknown and is reported in `errors`; a directory that vanished (the VM stopped during the
/// scrape) gives None; pressure files missing from a directory that exists are an error (a
/// kernel booted with `psi=0`): a lookup that finds nothing must not read as success.
pub fn read_cgroup_pressure(
    host: &HostRoot,
    held: &mut HeldFiles<u32>,
    key: u32,
    dir: &std::path::Path,
    id: String,
    errors: &mut Vec<SourceError>,
) -> Option<VmPressure> {
    let mut vm = VmPressure { id, ratios: [None; 6] };
    for (i, res) in RESOURCES.iter().enumerate() {
        let file = || dir.join(format!("{res}.pressure"));
        match held.read(&key, i, || host.path(file())).and_then(utf8) {
            Ok(text) => match parse_pressure(text) {
                Ok(p) => vm.ratios[2 * i..2 * i + 2].copy_from_slice(&ratios(&p)),
                Err(e) => errors.push(e.input(file().display().to_string()).into()),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !host.path(dir).exists() {
                    return None;
                }
                errors.push(SourceError::io(
                    host.path(file()),
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "no pressure file in the VM's cgroup (kernel booted with psi=0?)",
                    ),
                ));
            }
            Err(e) => errors.push(SourceError::io(host.path(file()), e)),
        }
    }
    Some(vm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heldfile::{FdBudget, OnStale};

    #[test]
    fn a_full_file() {
        let p = parse_pressure(
            "some avg10=12.50 avg60=3.00 avg300=0.75 total=123456789\nfull avg10=2.00 avg60=0.50 avg300=0.10 total=4242\n",
        )
        .unwrap();
        assert_eq!(p.some, Some(Averages { avg10: 12.5, avg60: 3.0, avg300: 0.75, total_us: 123_456_789 }));
        assert_eq!(p.full.map(|f| f.total_us), Some(4242));
        assert_eq!(ratios(&p), [Some(0.125), Some(0.02)]);
    }

    #[test]
    fn cpu_without_full_line_counts_full_as_zero() {
        let p = parse_pressure("some avg10=1.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!(p.full, None);
        assert_eq!(ratios(&p), [Some(0.01), Some(0.0)]);
    }

    #[test]
    fn unknown_keys_and_lines_are_ignored() {
        let p = parse_pressure("some avg10=1.00 avg60=0.00 avg300=0.00 total=5 future=1\nother x=1\n").unwrap();
        assert_eq!(p.some.map(|s| s.avg10), Some(1.0));
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        for bad in [
            "",
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=x avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=101 avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=NaN avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=-1 avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=-5\n",
            "some avg10=0.00\n",
            "some\n",
            "\u{0}\u{1}garbage",
        ] {
            assert!(parse_pressure(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cgroup2_lines() {
        // Hybrid (this machine's kind): the v1 hierarchies first, cgroup2 as `0::`.
        assert_eq!(
            cgroup2_path("4:memory:/qemu.slice/100.scope\n1:cpu:/\n0::/qemu.slice/100.scope\n"),
            Some("/qemu.slice/100.scope")
        );
        // libvirt's emulator thread group below the machine scope.
        let libvirt = r"/machine.slice/machine-qemu\x2d1\x2dweb.scope/libvirt/emulator";
        assert_eq!(cgroup2_path(&format!("0::{libvirt}\n")), Some(libvirt));
        assert_eq!(cgroup2_path("4:memory:/x\n1:cpu:/\n"), None, "pure v1");
        assert_eq!(cgroup2_path("0::\n"), None);
    }

    #[test]
    fn reading_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let scope = std::path::Path::new("/sys/fs/cgroup/unified/qemu.slice/101.scope");
        let full = dir.path().join(scope.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&full).unwrap();
        std::fs::write(full.join("cpu.pressure"), "some avg10=50.00 avg60=0 avg300=0 total=1\n").unwrap();
        std::fs::write(full.join("memory.pressure"), "garbage\n").unwrap();
        let host = HostRoot::new(dir.path());
        let mut held = HeldFiles::new(FdBudget::new(100), OnStale::Reopen);
        let mut errors = Vec::new();
        let vm = read_cgroup_pressure(&host, &mut held, 4242, scope, "101".into(), &mut errors).unwrap();
        assert_eq!(vm.ratios, [Some(0.5), Some(0.0), None, None, None, None]);
        // memory.pressure is malformed, io.pressure missing while the cgroup exists: both said.
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].to_string().contains("memory.pressure"), "{errors:?}");
        assert!(errors[1].to_string().contains("psi=0"), "{errors:?}");
        // A VM that stopped meanwhile (its cgroup gone): not an error.
        let mut errors = Vec::new();
        let gone = std::path::Path::new("/sys/fs/cgroup/unified/qemu.slice/102.scope");
        assert_eq!(read_cgroup_pressure(&host, &mut held, 4243, gone, "102".into(), &mut errors), None);
        assert!(errors.is_empty());
    }
}
