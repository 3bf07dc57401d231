//! Builds the eBPF programs (pve-exporter-ebpf) for the bpf target and leaves the object in
//! OUT_DIR, where `sources::kernel::ebpf` embeds it. Only with the `ebpf` feature (the default).

use std::{env, path::Path, process::Command};

const HOW_TO: &str = "\
pve-exporter: the eBPF toolchain is missing: {what}.
  Install it with:   cargo xtask setup
    (apt-get install llvm-22-dev; rustup toolchain install nightly --component rust-src;
     LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22)
  or build the procfs-only binary:   cargo build --no-default-features";

fn missing(what: &str) -> anyhow::Error {
    anyhow::anyhow!(HOW_TO.replace("{what}", what))
}

fn on_path(bin: &str) -> bool {
    env::var_os("PATH").is_some_and(|p| env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn check_toolchain() -> anyhow::Result<()> {
    if !on_path("bpf-linker") {
        return Err(missing("bpf-linker is not on PATH"));
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| missing(&format!("cannot run rustup ({e})")))?;
    if !sysroot.status.success() {
        return Err(missing("no nightly toolchain (rustup run nightly rustc failed)"));
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if !Path::new(&sysroot).join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err(missing("the nightly toolchain has no rust-src component"));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return Ok(());
    }
    if let Err(e) = check_toolchain() {
        // A plain message, not an error value with a backtrace: this is advice for a person.
        eprintln!("\n{e}\n");
        std::process::exit(1);
    }
    let manifest = env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest).join("../pve-exporter-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    println!("cargo:rerun-if-changed=../pve-exporter-common/src");
    aya_build::build_ebpf(
        [aya_build::Package { name: "pve-exporter-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )?;
    strip_debug(&Path::new(&env::var("OUT_DIR")?).join("pve-exporter-ebpf"))
}

/// Drop the object's DWARF (`llvm-objcopy --strip-debug`), keep its BTF. bpf-linker needs the
/// debug info to write `.BTF` and `.BTF.ext` (hence `debug = 2` for the eBPF crate); the
/// loader uses those only. The DWARF was 520 of the object's 617 KiB, embedded in the
/// daemon's read-only data and read while the object is parsed at start: pages that then
/// stay in the RSS for good.
fn strip_debug(object: &Path) -> anyhow::Result<()> {
    let llvm = env::var("LLVM_PREFIX").unwrap_or_else(|_| "/usr/lib/llvm-22".into());
    let tool = Path::new(&llvm).join("bin/llvm-objcopy");
    let tool = if tool.is_file() { tool } else { "llvm-objcopy".into() };
    let status = Command::new(&tool)
        .arg("--strip-debug")
        .arg(object)
        .status()
        .map_err(|e| missing(&format!("cannot run {} ({e}); it comes with llvm-22", tool.display())))?;
    anyhow::ensure!(status.success(), "{} --strip-debug {}: {status}", tool.display(), object.display());
    Ok(())
}
