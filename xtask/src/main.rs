//! Developer tasks. `cargo xtask setup | run | demo | test | bench | fuzz | soak | deb`; see README.md.

mod bench;
mod deb;
mod demo;
mod fuzz;
mod pgo;
mod soak;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

  setup            install everything the build and the tests need (idempotent):
                   apt packages, nightly rust-src, bpf-linker
  run [-- ARGS]    setup, build, and run the exporter on :9116; on a host without VMs
                   (no /etc/pve/qemu-server/*.conf) it starts two demo VMs first
  demo [-- ARGS]   like run, but always with the demo VMs
  test             setup, then the whole test suite: fmt, clippy, unit, fixture, golden,
                   promtool and the privileged eBPF/KVM tests, the procfs-only build, the
                   fuzz smoke run and scaling check, the short soak, and the benchmarks in
                   their quick mode
  bench [--quick] [host|ebpf|parsers|all]
                   the benchmarks of docs/benchmarks.md (profile-guided release build, as
                   `xtask deb` packages it, in target/pgo; results also in
                   target/bench/); --quick is the test suite's small, fast mode
  fuzz [TARGET ...] [--seconds N] [--runs N] [--jobs N] [--smoke] [--scaling]
                   the parsers' fuzz targets (fuzz/, cargo-fuzz on nightly), each for N
                   seconds (default 60; --smoke: the test suite's few seconds) or N
                   executions, --jobs targets at once; figures in target/fuzz/report.md,
                   failing inputs in target/fuzz/artifacts/; --scaling: no fuzzing, time
                   every parser on its corpus and on 10x those inputs (target/fuzz/scaling.md)
  soak [--short] [--hours N]
                   the soak and load harness on the release build: 50 scrapers on 20 KVM
                   guests, 200 guest lifetimes with eBPF, slow and hostile clients; --short
                   is the test suite's variant, --hours N repeats load and churn (release
                   checks); figures in target/soak/report.md
  deb [--binary PATH] [--out DIR]
                   build the Debian package (the profile-guided release build, target/pgo;
                   the package in target/debian/ by default)
  pgo              record pgo/pve-exporter.profdata again: an instrumented daemon through
                   the bench host's cases (real QEMUs, containers, agents, a fixture tree)";

/// Debian packages the build and the tests use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",      // bpf-linker links against it
    "prometheus",       // promtool checks a real scrape
    "qemu-system-x86",  // the NIC and disk tests run real QEMU VMs (tests/qemu.rs)
    "qemu-utils",       // qemu-img makes their disks
    "qemu-guest-agent", // tests/agent.rs asks a real agent about this machine's file systems
    "curl",             // tests/web.rs: a real TLS client
    "openssl",          // tests/web.rs: test certificates
    "systemd",          // tests/package.rs: systemd-analyze verify of the unit
    "binutils",         // xtask deb: strip, objdump
    "lxc",              // tests/live_lxc_real.rs: a real LXC container laid out as PVE's
    "busybox-static",   // ... made by LXC's busybox template (a static busybox: no host libraries)
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let (task, rest) = args.split_first().map(|(t, r)| (t.as_str(), r)).unwrap_or(("help", &[]));
    let passthrough: Vec<String> = match rest.iter().position(|a| a == "--") {
        Some(i) => rest[i + 1..].to_vec(),
        None => rest.to_vec(),
    };
    match task {
        "setup" => setup(),
        "run" => {
            setup()?;
            demo::run(&workspace_root(), &passthrough, false)
        }
        "demo" => {
            setup()?;
            demo::run(&workspace_root(), &passthrough, true)
        }
        "test" => {
            setup()?;
            test()
        }
        "bench" => {
            setup()?;
            bench::run(&passthrough)
        }
        "fuzz" => {
            setup()?;
            fuzz::run(&passthrough)
        }
        "soak" => {
            setup()?;
            soak::run(&passthrough)
        }
        "pgo" => {
            setup()?;
            pgo::generate()
        }
        "deb" => deb::build(&deb::Options::parse(&passthrough)?).map(|_| ()),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n{USAGE}"),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

pub fn step(what: &str) {
    println!("==> {what}");
}

/// Run a command, failing with its command line when it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The version apt would install of `package` (None: unknown to apt).
fn candidate(package: &str) -> Option<String> {
    let o = Command::new("apt-cache").args(["policy", package]).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let v = text.lines().find_map(|l| l.trim().strip_prefix("Candidate:"))?.trim().to_string();
    (v != "(none)").then_some(v)
}

/// The installed version of `package`.
fn installed(package: &str) -> Option<String> {
    let o = Command::new("dpkg-query").args(["-W", "-f=${Version}", package]).output().ok()?;
    let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !v.is_empty()).then_some(v)
}

fn setup() -> Result<()> {
    step("setup: apt packages");
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("    present: {}", APT_PACKAGES.join(" "));
    } else {
        let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
        let apt = |args: &[&str]| {
            let mut all: Vec<&str> = sudo.to_vec();
            all.push("apt-get");
            all.extend_from_slice(args);
            let mut c = Command::new(all[0]);
            c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
            run_cmd(&mut c)
        };
        apt(&["update", "-qq"])?;
        let mut args: Vec<String> =
            ["install", "-y", "-qq", "--no-install-recommends"].iter().map(|s| s.to_string()).collect();
        // All of them, not only the missing ones: naming every package makes apt keep a set
        // that fits together. A machine of this kind comes with a newer, backported
        // qemu-utils (10.x) that Debian 12's qemu-system-x86 (7.2) breaks; apt will not
        // downgrade it by itself ("held broken packages"), so the QEMU packages are asked
        // at the version of the distribution's qemu-system-x86.
        let qemu = candidate("qemu-system-x86");
        for p in APT_PACKAGES {
            match (*p, &qemu) {
                ("qemu-utils", Some(v)) if installed("qemu-utils").as_ref() != Some(v) => {
                    args.push("--allow-downgrades".into());
                    args.push(format!("qemu-utils={v}"));
                }
                _ => args.push(p.to_string()),
            }
        }
        apt(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    }

    step("setup: nightly toolchain with rust-src (builds the eBPF programs)");
    let has_nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("nightly")));
    if !has_nightly {
        run_cmd(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "clippy", "--toolchain", "nightly"]))?;

    step("setup: cargo-fuzz (the parsers' fuzz targets, fuzz/)");
    fuzz::ensure_cargo_fuzz()?;

    step("setup: bpf-linker");
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if linker_ok {
        println!("    present: bpf-linker {BPF_LINKER_VERSION}");
    } else {
        // LLVM_PREFIX: Debian's default llvm-config may be an older LLVM; bpf-linker must link
        // against the LLVM 22 it was built for.
        run_cmd(
            Command::new("cargo")
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
    }
    Ok(())
}

/// The cargo that runs xtask (`CARGO`), else the one on the PATH.
pub fn cargo_bin() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(args: &[&str]) -> Result<()> {
    let mut c = Command::new(cargo_bin());
    c.args(args).current_dir(workspace_root());
    run_cmd(&mut c)
}

fn test() -> Result<()> {
    if !is_root() {
        eprintln!("xtask: warning: not root: the privileged eBPF/KVM tests will fail (they need root and /dev/kvm)");
    }
    step("cargo fmt --check");
    cargo(&["fmt", "--all", "--", "--check"])?;
    step("cargo clippy (warnings are errors)");
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    step("clippy of the eBPF programs for the bpf target (warnings are errors)");
    run_cmd(
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "clippy", "-p", "pve-exporter-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir", "target/ebpf-lint"])
            .args(["--", "-D", "warnings"])
            .current_dir(workspace_root())
            // The outer cargo's variables would pin the inner one to the stable toolchain.
            .env_remove("RUSTC")
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    step("cargo test (unit, fixture, golden, promtool, privileged eBPF/KVM)");
    // The live tests start the KVM test guest, a binary of another workspace crate: cargo
    // test builds only the tested package's own binaries for its integration tests.
    cargo(&["build", "-p", "pve-test-guest"])?;
    cargo(&["test", "--no-fail-fast"])?;
    step("procfs-only build (--no-default-features)");
    cargo(&["build", "-p", "pve-exporter", "--no-default-features"])?;
    // Every fuzz target for a few seconds, so none rots (the long runs: cargo xtask fuzz), and
    // every parser on 10x its inputs (a ratio far from 10 is super-linear time).
    step("fuzz targets, smoke run (cargo xtask fuzz --smoke)");
    fuzz::run(&["--smoke".to_string()])?;
    step("fuzz targets, scaling check on 10x inputs (cargo xtask fuzz --scaling --smoke)");
    fuzz::run(&["--scaling".to_string(), "--smoke".to_string()])?;
    // The soak harness's short variant: load, guest churn and hostile clients, release build.
    step("soak harness, short variant (cargo xtask soak --short)");
    soak::run(&["--short".to_string()])?;
    // The benchmarks run in their quick mode so they never rot; they assert nothing about time
    // (the figures go into docs/benchmarks.md from a full `cargo xtask bench`).
    step("benchmarks, quick mode (cargo xtask bench --quick)");
    bench::run(&["--quick".to_string()])?;
    println!("==> all tests passed");
    Ok(())
}
