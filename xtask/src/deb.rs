//! `cargo xtask deb`: the Debian package, assembled here and built with `dpkg-deb` (no
//! debhelper, no cargo-deb: the maintainer scripts in packaging/debian/ are the whole policy,
//! and they enable nothing).

use std::{
    collections::BTreeSet,
    env, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{run_cmd, workspace_root};

const NAME: &str = "pve-exporter";
const DOC: &str = "usr/share/doc/pve-exporter";

pub struct Options {
    /// Package this binary instead of building the release one (the tests package their
    /// debug build).
    pub binary: Option<PathBuf>,
    /// Where the .deb goes (default: <target>/debian).
    pub out: Option<PathBuf>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Options { binary: None, out: None };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--binary" => o.binary = Some(it.next().context("--binary needs a path")?.into()),
                "--out" => o.out = Some(it.next().context("--out needs a directory")?.into()),
                other => bail!("deb: unknown argument {other:?} (--binary PATH, --out DIR)"),
            }
        }
        Ok(o)
    }
}

fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Build the package; returns its path.
pub fn build(opts: &Options) -> Result<PathBuf> {
    let root = workspace_root();
    let binary = match &opts.binary {
        Some(b) => b.clone(),
        None => {
            // The measured build (docs/benchmarks.md): release, with the recorded profile.
            crate::step("cargo build --release -p pve-exporter (profile-guided, target/pgo)");
            crate::pgo::release_build(&[NAME])?.join(NAME)
        }
    };
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_string();
    let out = opts.out.clone().unwrap_or_else(|| target_dir(&root).join("debian"));
    let stage = out.join(format!("stage-{NAME}_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    crate::step(&format!("staging {}", stage.display()));

    let put = |src: &Path, dst: &str, mode: u32| -> Result<()> {
        let to = stage.join(dst);
        fs::create_dir_all(to.parent().context("path without parent")?)?;
        fs::copy(src, &to).with_context(|| format!("cannot copy {} to {}", src.display(), to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let bin = stage.join("usr/bin").join(NAME);
    fs::create_dir_all(bin.parent().context("usr/bin")?)?;
    // Debug info off (the tests package a debug build of some hundred MB); symbols stay for
    // backtraces. The embedded eBPF object is data and stays as it is.
    run_cmd(Command::new("strip").arg("--strip-debug").arg("-o").arg(&bin).arg(&binary))
        .context("strip (package binutils)")?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let p = |rel: &str| root.join(rel);
    put(&p("packaging/pve-exporter.service"), "usr/lib/systemd/system/pve-exporter.service", 0o644)?;
    // 0600: it may hold the API token (PVE_EXPORTER_API_TOKEN); systemd reads it as root.
    put(&p("packaging/pve-exporter.default"), "etc/default/pve-exporter", 0o600)?;
    for (src, name) in [
        ("README.md", "README.md"),
        ("docs/operations.md", "operations.md"),
        ("docs/metrics.md", "metrics.md"),
        ("docs/ebpf.md", "ebpf.md"),
        ("packaging/debian/copyright", "copyright"),
    ] {
        put(&p(src), &format!("{DOC}/{name}"), 0o644)?;
    }
    for (src, name) in [
        ("contrib/grafana/pve-exporter.json", "grafana/pve-exporter.json"),
        // Side by side under their own names: the tests file loads alerts.yml.
        ("contrib/prometheus/alerts.yml", "prometheus/alerts.yml"),
        ("contrib/prometheus/alerts_test.yml", "prometheus/alerts_test.yml"),
        ("packaging/web-config.example.yml", "web-config.yml"),
    ] {
        put(&p(src), &format!("{DOC}/examples/{name}"), 0o644)?;
    }
    for script in ["postinst", "prerm", "postrm"] {
        put(&p(&format!("packaging/debian/{script}")), &format!("DEBIAN/{script}"), 0o755)?;
    }
    fs::write(stage.join("DEBIAN/conffiles"), "/etc/default/pve-exporter\n")?;
    md5sums(&stage)?;

    let depends = depends(&bin)?;
    let installed_kib = installed_size(&stage)?;
    let control = format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: pve-exporter developers <pve-exporter@example.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: Prometheus exporter for Proxmox VE and KVM hosts\n \
         Per-VM and per-host metrics from /proc, /sys and /etc/pve, without API\n \
         credentials, and, where the kernel allows, per-VM KVM exit and run-queue\n \
         counters from eBPF programs on KVM and scheduler tracepoints.\n \
         .\n \
         The systemd service is installed but neither enabled nor started.\n"
    );
    fs::write(stage.join("DEBIAN/control"), control)?;
    for dir in walk(&stage)?.into_iter().filter(|p| p.is_dir()) {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    }

    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    run_cmd(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&stage).arg(&deb))?;
    println!("{}", deb.display());
    Ok(deb)
}

/// Every path below `dir` (not `dir` itself), sorted.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = e?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        }
        out.push(path);
    }
    out.sort();
    Ok(out)
}

/// DEBIAN/md5sums of the shipped files (conffiles have theirs in the dpkg database).
fn md5sums(stage: &Path) -> Result<()> {
    let files: Vec<String> = walk(stage)?
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| p.strip_prefix(stage).ok().map(|r| r.to_string_lossy().into_owned()))
        .filter(|r| !r.starts_with("DEBIAN/") && !r.starts_with("etc/"))
        .collect();
    let sums = output(Command::new("md5sum").args(&files).current_dir(stage))?;
    fs::write(stage.join("DEBIAN/md5sums"), sums)?;
    Ok(())
}

/// Installed-Size in KiB, as dpkg counts it: each file rounded up to whole KiB, plus one per
/// directory.
fn installed_size(stage: &Path) -> Result<u64> {
    let mut kib = 0;
    for p in walk(stage)? {
        if p.strip_prefix(stage).is_ok_and(|r| r.starts_with("DEBIAN")) {
            continue;
        }
        kib += if p.is_dir() { 1 } else { fs::metadata(&p)?.len().div_ceil(1024) };
    }
    Ok(kib)
}

/// Depends: the packages of the shared libraries the binary links, libc6 at the newest glibc
/// symbol version it needs (read from the binary's version references).
fn depends(bin: &Path) -> Result<String> {
    let dump = output(Command::new("objdump").arg("-p").arg(bin)).context("objdump (package binutils)")?;
    let mut packages = BTreeSet::new();
    for line in dump.lines() {
        let Some(lib) = line.trim().strip_prefix("NEEDED") else { continue };
        let lib = lib.trim();
        let pkg = match lib {
            l if l.starts_with("libc.so")
                || l.starts_with("libm.so")
                || l.starts_with("libpthread.so")
                || l.starts_with("libdl.so")
                || l.starts_with("librt.so")
                || l.starts_with("ld-linux") =>
            {
                "libc6"
            }
            "libgcc_s.so.1" => "libgcc-s1",
            other => bail!("the binary links {other}: add its Debian package to xtask/src/deb.rs"),
        };
        packages.insert(pkg);
    }
    let glibc = dump
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|n| n.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0), parts.next().flatten().unwrap_or(0)))
        })
        .max();
    Ok(packages
        .into_iter()
        .map(|p| match (p, glibc) {
            ("libc6", Some((a, b, 0))) => format!("libc6 (>= {a}.{b})"),
            ("libc6", Some((a, b, c))) => format!("libc6 (>= {a}.{b}.{c})"),
            (p, _) => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", "))
}
