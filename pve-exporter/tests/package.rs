//! The Debian package: `cargo xtask deb` packages this build's binary, dpkg installs it into
//! a scratch root (maintainer scripts run with DPKG_ROOT set, never touching this machine's
//! systemd), then removes and purges it; systemd-analyze checks the unit. Plus the unit and the
//! environment file against the daemon and docs/operations.md.

mod ops;

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(WORKSPACE).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo xtask deb --binary <this build's daemon> --out <dir>`.
fn build_deb(out: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // A target directory of its own for the xtask build: the outer cargo's may be locked.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xtask-target");
    let o = run(Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--", "deb", "--binary", ops::DAEMON, "--out"])
        .arg(out)
        .current_dir(WORKSPACE)
        .env("CARGO_TARGET_DIR", target));
    let deb = PathBuf::from(stdout(&o).lines().last().unwrap_or_default().trim());
    assert!(deb.is_file() && deb.extension().is_some_and(|e| e == "deb"), "xtask deb printed {deb:?}");
    deb
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        // Maintainer scripts run here with DPKG_ROOT=<root>, not chrooted: the scratch root
        // has no shell of its own.
        .arg("--force-script-chrootless")
        .args(args))
}

fn status(root: &Path) -> String {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}/var/lib/dpkg", root.display()))
        .args(["-W", "-f=${Status}", "pve-exporter"])
        .output()
        .expect("dpkg-query");
    stdout(&out)
}

/// An empty package named like `name` at the version installed on this machine.
fn stand_in(dir: &Path, name: &str) -> PathBuf {
    let version = stdout(&run(Command::new("dpkg-query").args(["-W", "-f=${Version}", name])));
    let arch = stdout(&run(Command::new("dpkg").arg("--print-architecture")));
    let stage = dir.join(format!("stand-in-{name}"));
    std::fs::create_dir_all(stage.join("DEBIAN")).expect("mkdir");
    std::fs::write(
        stage.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {}\nMaintainer: test <test@example.invalid>\n\
             Description: stand-in for {name} in a scratch root\n",
            arch.trim()
        ),
    )
    .expect("control");
    let deb = dir.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&stage).arg(&deb));
    deb
}

/// Files and links below `root`, outside dpkg's database.
fn leftovers(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let ty = e.file_type().expect("file type");
            if ty.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.retain(|p| !p.starts_with(root.join("var/lib/dpkg")));
    out
}

#[test]
fn debian_package_installs_removes_and_purges_cleanly() {
    // SAFETY: no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "dpkg --root needs root: run the suite as root, as CI does");
    let work = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(&work.path().join("out"));

    // The package's metadata and contents.
    let fields = stdout(&run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args([
        "Package",
        "Version",
        "Depends",
        "Installed-Size",
    ])));
    assert!(fields.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))), "{fields}");
    assert!(fields.contains("Depends: libc6 (>= 2."), "{fields}");
    let contents = stdout(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/bin/pve-exporter",
        "./usr/lib/systemd/system/pve-exporter.service",
        "./etc/default/pve-exporter",
        "./usr/share/doc/pve-exporter/operations.md",
        "./usr/share/doc/pve-exporter/metrics.md",
        "./usr/share/doc/pve-exporter/copyright",
        "./usr/share/doc/pve-exporter/examples/grafana/pve-exporter.json",
        "./usr/share/doc/pve-exporter/examples/prometheus/alerts.yml",
        "./usr/share/doc/pve-exporter/examples/prometheus/alerts_test.yml",
        "./usr/share/doc/pve-exporter/examples/web-config.yml",
    ] {
        let line =
            contents.lines().find(|l| l.ends_with(path)).unwrap_or_else(|| panic!("{path} missing:\n{contents}"));
        assert!(line.contains("root/root"), "{line}");
        let mode = if path.ends_with("/pve-exporter") && path.contains("/bin/") {
            "-rwxr-xr-x"
        } else if path.starts_with("./etc/default/") {
            "-rw-------" // it may hold the API token
        } else {
            "-rw-r--r--"
        };
        assert!(line.starts_with(mode), "{line}");
    }

    // Install into a scratch root: nothing enabled, nothing started, a note on how to. The
    // root's dpkg database first gets stand-ins for the dependencies, at the versions this
    // machine has: Depends must be satisfiable by Debian 12's packages.
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let depends = fields.lines().find_map(|l| l.strip_prefix("Depends: ")).expect("Depends").to_string();
    for dep in depends.split(',') {
        let name = dep.split_whitespace().next().expect("package name");
        let stub = stand_in(work.path(), name);
        dpkg(&root, &["-i", &stub.to_string_lossy()]);
    }
    let deb_s = deb.to_string_lossy().into_owned();
    let install = dpkg(&root, &["-i", &deb_s]);
    let said = stdout(&install);
    assert!(
        said.contains("not enabled and not started") && said.contains("systemctl enable --now pve-exporter"),
        "{said}"
    );
    assert_eq!(status(&root), "install ok installed");
    let bin = root.join("usr/bin/pve-exporter");
    assert_eq!(std::fs::metadata(&bin).expect("binary").permissions().mode() & 0o7777, 0o755);
    let version = stdout(&run(Command::new(&bin).arg("--version")));
    assert_eq!(version.trim(), format!("pve-exporter {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(
        std::fs::read_to_string(root.join("usr/lib/systemd/system/pve-exporter.service")).expect("unit"),
        read("packaging/pve-exporter.service")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/default/pve-exporter")).expect("default file"),
        read("packaging/pve-exporter.default")
    );
    let default_mode = std::fs::metadata(root.join("etc/default/pve-exporter")).expect("default file").permissions();
    assert_eq!(default_mode.mode() & 0o7777, 0o600, "the settings may hold the API token");
    let conffiles = stdout(&run(Command::new("dpkg-query")
        .arg(format!("--admindir={}/var/lib/dpkg", root.display()))
        .args(["-W", "-f=${Conffiles}", "pve-exporter"])));
    assert!(conffiles.trim().starts_with("/etc/default/pve-exporter "), "{conffiles}");
    // Every shipped file matches the package's md5sums.
    let verify = dpkg(&root, &["--verify", "pve-exporter"]);
    assert!(stdout(&verify).trim().is_empty(), "{}", stdout(&verify));
    assert!(!root.join("etc/systemd/system").exists(), "the package enables nothing");
    // The shipped rules and their tests work where they are installed.
    let examples = root.join("usr/share/doc/pve-exporter/examples/prometheus");
    run(Command::new("promtool").arg("test").arg("rules").arg(examples.join("alerts_test.yml")));

    // The unit as installed passes systemd-analyze (its ExecStart pointed at the scratch root).
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/pve-exporter.service")).expect("unit");
    let copy = work.path().join("pve-exporter.service");
    std::fs::write(&copy, unit.replace("ExecStart=/usr/bin/pve-exporter", &format!("ExecStart={}", bin.display())))
        .expect("unit copy");
    let analyze = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let complaints = String::from_utf8_lossy(&analyze.stderr).into_owned();
    assert!(!complaints.contains("pve-exporter"), "systemd-analyze verify: {complaints}");

    // An upgrade (here: the same version again) does not repeat the note.
    let again = dpkg(&root, &["-i", &deb_s]);
    assert!(!stdout(&again).contains("systemctl enable"), "{}", stdout(&again));

    // The operator enabled it (systemctl enable makes this link).
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).expect("mkdir");
    std::os::unix::fs::symlink("/usr/lib/systemd/system/pve-exporter.service", wants.join("pve-exporter.service"))
        .expect("enable link");

    // Remove: the program goes, the settings stay.
    dpkg(&root, &["-r", "pve-exporter"]);
    assert_eq!(status(&root), "deinstall ok config-files");
    assert!(!bin.exists() && !root.join("usr/lib/systemd/system/pve-exporter.service").exists());
    assert!(!root.join("usr/share/doc/pve-exporter").exists());
    assert!(root.join("etc/default/pve-exporter").exists(), "remove keeps the settings");

    // Purge: everything the package and its enabling added is gone.
    dpkg(&root, &["--purge", "pve-exporter"]);
    assert!(!root.join("etc/default/pve-exporter").exists());
    assert!(std::fs::symlink_metadata(wants.join("pve-exporter.service")).is_err(), "enable link left behind");
    assert_eq!(leftovers(&root), Vec::<PathBuf>::new());
    let st = status(&root);
    assert!(st.is_empty() || st.contains("not-installed"), "{st:?}");
}

/// The unit's `Key=value` lines.
fn unit_lines() -> Vec<(String, String)> {
    read("packaging/pve-exporter.service")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect()
}

#[test]
fn the_unit_keeps_exactly_the_rights_the_daemon_needs() {
    let lines = unit_lines();
    let get = |k: &str| lines.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("Type"), Some("notify"));
    assert_eq!(get("NotifyAccess"), Some("main"));
    assert!(get("WatchdogSec").is_some());
    assert_eq!(get("ExecReload"), Some("/bin/kill -HUP $MAINPID"));
    assert_eq!(get("Restart"), Some("on-failure"));
    let caps: BTreeSet<&str> = get("CapabilityBoundingSet").unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        caps,
        BTreeSet::from([
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
            "CAP_DAC_READ_SEARCH",
            "CAP_NET_ADMIN"
        ])
    );
    for hardening in ["NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelModules", "ProtectKernelTunables"] {
        assert_eq!(get(hardening), Some("yes"), "{hardening}");
    }
    assert_eq!(get("ProtectSystem"), Some("strict"));
    // Stop: the daemon's grace (default 10 s) fits in systemd's.
    let stop: u64 = get("TimeoutStopSec").and_then(|v| v.strip_suffix('s')).and_then(|v| v.parse().ok()).expect("s");
    assert!(stop > 10 + 2, "TimeoutStopSec {stop}s leaves no room for --shutdown-timeout 10s");
    // The environment file systemd loads is the one the daemon re-reads on SIGHUP.
    let env_file = get("EnvironmentFile").unwrap_or_default().trim_start_matches('-');
    assert_eq!(env_file, "/etc/default/pve-exporter");
    assert!(get("ExecStart").unwrap_or_default().contains(&format!("--env-file={env_file}")));
}

#[test]
fn operations_md_explains_every_line_of_the_unit() {
    let doc = read("docs/operations.md");
    for (key, _) in unit_lines() {
        assert!(doc.contains(&format!("`{key}=")), "docs/operations.md does not explain {key}=");
    }
}

#[test]
fn the_environment_file_names_only_real_settings() {
    let text = read("packaging/pve-exporter.default");
    // What is set must parse; what is commented out must be a variable the daemon reads.
    pve_exporter::service::parse_env_file(&text).expect("the default file parses");
    let help = stdout(&run(Command::new(ops::DAEMON).arg("--help")));
    let mut named = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("PVE_EXPORTER_") {
            named += 1;
            assert!(help.contains(&format!("[env: {word}=")), "{word} in the default file is not a setting");
        }
    }
    assert!(named >= 10, "the default file documents the main settings");
    for reloadable in pve_exporter::service::RELOADABLE {
        assert!(text.contains(reloadable), "{reloadable}");
    }
}
