//! The profile-guided release build (docs/benchmarks.md, "Profile-guided build").
//!
//! `pgo/pve-exporter.profdata` is what an instrumented daemon recorded on the bench host (real
//! QEMUs with and without the monitor exchange and guest agents, containers, stopped guests, a
//! fixture tree). The release builds that are measured and shipped, `cargo xtask bench` and
//! `cargo xtask deb`, compile with it ([`release_build`]): LLVM lays out and inlines by the
//! recorded counts and optimises what never ran for size. A plain `cargo build --release` does
//! not (cargo's configuration cannot name a file relative to the workspace for every crate).
//!
//! `cargo xtask pgo` records the profile again ([`generate`]). A function changed since the
//! recording is compiled as without a profile (LLVM warns "profile data may be out of date"):
//! record again after changing what a scrape runs, and measure.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{bench, cargo_bin, run_cmd, workspace_root};

/// The recorded profile, relative to the workspace root.
pub const PROFILE: &str = "pgo/pve-exporter.profdata";

/// Build `packages` (release, their binaries) into `target` with `flags` added to the
/// caller's `RUSTFLAGS`.
fn build(packages: &[&str], flags: &str, target: &Path) -> Result<()> {
    let rustflags = match env::var("RUSTFLAGS") {
        Ok(f) if !f.trim().is_empty() => format!("{f} {flags}"),
        _ => flags.to_string(),
    };
    let mut c = Command::new(cargo_bin());
    c.current_dir(workspace_root()).args(["build", "--release", "--bins"]);
    for p in packages {
        c.args(["-p", p]);
    }
    run_cmd(c.env("RUSTFLAGS", rustflags).env("CARGO_TARGET_DIR", target))
}

/// Build `packages` (release) with the recorded profile, in a target directory of their own
/// (`target/pgo`: other rustflags would make cargo rebuild the plain release build each time
/// one follows the other). Returns the directory of the binaries.
pub fn release_build(packages: &[&str]) -> Result<PathBuf> {
    let ws = workspace_root();
    let profile = ws.join(PROFILE);
    if !profile.exists() {
        bail!("{} is missing: record it with `cargo xtask pgo`", profile.display());
    }
    let target = bench::target_dir(&ws).join("pgo");
    // Functions without a count (new since the recording, or never run) are not worth a
    // warning each; changed ones are (LLVM's hash-mismatch warning stays on).
    let flags = format!("-Cprofile-use={} -Cllvm-args=-pgo-warn-missing-function=false", profile.display());
    build(packages, &flags, &target)?;
    Ok(target.join("release"))
}

/// LLVM's major version in rustc (`LLVM version: 22.1.2`): the profile tools must be of it.
fn rustc_llvm_major() -> Result<String> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc).arg("-vV").output().with_context(|| format!("cannot run {rustc}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_string)
        .context("rustc -vV names no LLVM version")
}

/// `cargo xtask pgo`: build the daemon instrumented, run it through the bench host's cases,
/// and merge what it recorded into [`PROFILE`].
pub fn generate() -> Result<()> {
    let ws = workspace_root();
    let major = rustc_llvm_major()?;
    // Debian's llvm-<major> (setup installs llvm-22-dev, which brings it).
    let profdata = format!("llvm-profdata-{major}");
    if Command::new(&profdata).arg("--version").output().is_err() {
        bail!("{profdata} not found: rustc's LLVM is {major}; install llvm-{major}");
    }
    let target = bench::target_dir(&ws).join("pgo-gen");
    let raw = target.join("raw");
    if raw.exists() {
        fs::remove_dir_all(&raw).with_context(|| format!("cannot clear {}", raw.display()))?;
    }
    fs::create_dir_all(&raw)?;
    crate::step("instrumented release build (-Cprofile-generate)");
    build(&["pve-exporter", "pve-test-guest"], &format!("-Cprofile-generate={}", raw.display()), &target)?;
    // Only the daemon's runs: the build scripts, instrumented too, wrote theirs already.
    fs::remove_dir_all(&raw)?;
    fs::create_dir_all(&raw)?;
    crate::step("the bench host's cases, run by the instrumented daemon");
    let b = bench::Bench { quick: false, bin: target.join("release"), dir: bench::target_dir(&ws).join("bench") };
    fs::create_dir_all(&b.dir)?;
    bench::profile_workload(&b)?;
    let runs: Vec<PathBuf> = fs::read_dir(&raw)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "profraw"))
        .collect();
    if runs.is_empty() {
        bail!("the instrumented daemon wrote no profile to {} (did it exit cleanly?)", raw.display());
    }
    let out = ws.join(PROFILE);
    fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    crate::step(&format!("{profdata} merge --sparse ({} run(s)) -> {PROFILE}", runs.len()));
    // Sparse: functions that never ran are left out (1.2 MB instead of 5.5).
    run_cmd(Command::new(&profdata).args(["merge", "--sparse", "-o"]).arg(&out).args(&runs))?;
    println!("{} bytes in {}", fs::metadata(&out)?.len(), out.display());
    Ok(())
}
