//! The operator content against real Prometheus: promtool checks and unit-tests the alert
//! rules; a real Prometheus (Debian's package) scrapes the daemon, plain and over TLS with
//! basic auth, while a real KVM guest runs, and every dashboard query and alert rule is
//! evaluated through its HTTP API. Names used by the dashboard and the rules must be
//! documented in docs/metrics.md.

mod common;
mod ops;
mod prom;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use prom::{Prometheus, value};
use serde_json::Value;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/prometheus/alerts.yml");
const RULE_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/prometheus/alerts_test.yml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/grafana/pve-exporter.json");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).output().expect("run promtool (Debian package prometheus)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let text = promtool(&["check", "rules", RULES]);
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
    let text = promtool(&["test", "rules", RULE_TESTS]);
    assert!(text.contains("SUCCESS"), "{text}");
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("dashboard")).expect("dashboard is JSON")
}

/// Every `expr` of the dashboard's panels.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr").to_string();
            out.push((p["title"].as_str().unwrap_or_default().to_string(), expr));
        }
    }
    out
}

/// `pve_*` names in a PromQL expression, histogram series names folded to their family.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("pve_"))
        .map(|w| {
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = w.strip_suffix(suffix)
                    && (base.ends_with("_seconds") || base.ends_with("_bytes"))
                {
                    return base.to_string();
                }
            }
            w.to_string()
        })
        .collect()
}

#[test]
fn dashboard_and_rules_use_documented_metrics() {
    let docs = std::fs::read_to_string(Path::new(WORKSPACE).join("docs/metrics.md")).expect("docs/metrics.md");
    let documented: BTreeSet<&str> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|n| n.starts_with("pve_"))
        .collect();
    let d = dashboard();
    let mut exprs: Vec<String> = dashboard_queries(&d).into_iter().map(|(_, e)| e).collect();
    let rules: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(RULES).expect("rules")).expect("yaml");
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            exprs.push(r["expr"].as_str().expect("expr").to_string());
        }
    }
    let mut used = BTreeSet::new();
    for e in &exprs {
        used.extend(metric_names(e));
    }
    let unknown: Vec<&String> = used.iter().filter(|n| !documented.contains(n.as_str())).collect();
    assert!(unknown.is_empty(), "not in docs/metrics.md: {unknown:?}");
    // The main families each have a place on the dashboard.
    for family in [
        "pve_kvm_cpu_seconds_total",
        "pve_kvm_memory_extended",
        "pve_kvm_nic_rx_bytes_total",
        "pve_kvm_disk_read_bytes_total",
        "pve_kvm_exits_total",
        "pve_kvm_vcpu_wait_seconds_total",
        "pve_kvm_vcpu_runqueue_wait_seconds",
        "pve_node_storage_size_bytes",
        "pve_node_load1",
        "pve_vm_pressure_cpu_some_ratio",
        "pve_physical_disk_health",
        "pve_ha_node_status",
    ] {
        assert!(used.contains(family), "the dashboard or rules do not show {family}");
    }

    // Dashboard structure Grafana relies on.
    assert_eq!(d["uid"], "pve-exporter-host");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_u64().expect("id")), "duplicate panel id {}", p["id"]);
        let g = &p["gridPos"];
        assert!(g["x"].as_u64().unwrap_or(99) + g["w"].as_u64().unwrap_or(99) <= 24, "{} too wide", p["title"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(!p["targets"].as_array().expect("targets").is_empty(), "{}", p["title"]);
        }
    }
    let vars: Vec<&str> =
        d["templating"]["list"].as_array().expect("vars").iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(vars, ["datasource", "instance", "vmid"]);
}

fn by_job<'a>(r: &'a [Value], job: &str) -> Option<&'a Value> {
    r.iter().find(|s| s["metric"]["job"] == job)
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_plain_and_over_tls_with_basic_auth() {
    common::require_privileges();
    let root = common::host_root(&[170]);
    let pki = ops::Pki::new();
    let web = pki.dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {}\n",
            ops::bcrypt_hash("scrape secret")
        ),
    )
    .expect("web config");
    let plain = ops::Exporter::start(root.path(), &[], &[]);
    let tls = ops::Exporter::start(root.path(), &["--ebpf", "off", "--web.config.file", &web.to_string_lossy()], &[]);
    let _guest = common::Guest::start(170, 2, 50, root.path());

    let ca = pki.path("ca.crt");
    let rules: PathBuf = Path::new(RULES).canonicalize().expect("rules path");
    let prom = Prometheus::start(&format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n\
         \x20 - job_name: pve-exporter\n    static_configs:\n      - targets: ['127.0.0.1:{plain}']\n\
         \x20 - job_name: pve-exporter-tls\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n\
         \x20   basic_auth:\n      username: prometheus\n      password: scrape secret\n\
         \x20   static_configs:\n      - targets: ['127.0.0.1:{tls}']\n\
         \x20 - job_name: wrong-password\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n\
         \x20   basic_auth:\n      username: prometheus\n      password: guessed\n\
         \x20   static_configs:\n      - targets: ['127.0.0.1:{tls}']\n",
        rules = rules.display(),
        plain = plain.port,
        tls = tls.port,
    ));
    let limit = Duration::from_secs(60);

    // All three targets scraped: the plain one and the TLS one with the right password up, the
    // wrong password down.
    let up = prom.wait_for("up", |r| r.len() == 3, limit);
    let up_of = |job: &str| by_job(&up, job).map(value);
    assert_eq!(up_of("pve-exporter"), Some(1.0), "{up:?}\n{}", plain.logs());
    assert_eq!(up_of("pve-exporter-tls"), Some(1.0), "{up:?}\n{}", tls.logs());
    assert_eq!(up_of("wrong-password"), Some(0.0), "{up:?}");
    let targets = prom.api("/api/v1/targets", None);
    let wrong = targets["data"]["activeTargets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["labels"]["job"] == "wrong-password")
        .expect("wrong-password target");
    assert!(wrong["lastError"].as_str().unwrap_or_default().contains("401"), "{wrong}");

    // A few scrape intervals of data.
    prom.wait_for("count_over_time(up{job=\"pve-exporter\"}[1m])", |r| value(&r[0]) >= 4.0, limit);
    let info = prom.query("pve_exporter_build_info");
    for job in ["pve-exporter", "pve-exporter-tls"] {
        let s = by_job(&info, job).unwrap_or_else(|| panic!("no build info from {job}: {info:?}"));
        assert_eq!(s["metric"]["version"], env!("CARGO_PKG_VERSION"));
    }
    // The guest, seen through both paths.
    let vm = prom.wait_for("pve_kvm_info{id=\"170\"}", |r| r.len() == 2, limit);
    assert!(vm.iter().all(|s| s["metric"]["name"] == "test170"), "{vm:?}");
    prom.wait_for("pve_kvm_vcores{id=\"170\"}", |r| r.iter().all(|s| value(s) == 2.0), limit);
    prom.wait_for("rate(pve_kvm_cpu_seconds_total{id=\"170\", job=\"pve-exporter\"}[10s])", |_| true, limit);
    prom.wait_for("pve_kvm_vcpu_threads{id=\"170\", job=\"pve-exporter\"}", |r| value(&r[0]) == 2.0, limit);

    // Every alert rule evaluates without error against real data.
    let deadline = Instant::now() + limit;
    loop {
        let rules = prom.api("/api/v1/rules", None);
        let all: Vec<Value> = rules["data"]["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(all.len(), 7, "{rules}");
        if all.iter().all(|r| r["health"] == "ok") {
            break;
        }
        let bad: Vec<&Value> = all.iter().filter(|r| r["health"] == "err").collect();
        assert!(bad.is_empty(), "rules failing: {bad:?}");
        assert!(Instant::now() < deadline, "rules not evaluated: {rules}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The exporter is up: the down alert is not pending.
    assert!(prom.query("ALERTS{alertname=\"PveExporterDown\", job=\"pve-exporter\"}").is_empty());

    // Every dashboard query runs, with the variables Grafana would fill in.
    let instance = format!("127.0.0.1:{}", plain.port);
    let fill = |e: &str| e.replace("$instance", &instance).replace("$vmid", ".*").replace("$__rate_interval", "10s");
    let d = dashboard();
    for (_, expr) in dashboard_queries(&d) {
        prom.query(&fill(&expr));
    }
    // Some of them show the guest, with its name joined from pve_kvm_info.
    let by_title =
        |t: &str| dashboard_queries(&d).into_iter().find(|(title, _)| title == t).map(|(_, e)| fill(&e)).expect(t);
    for title in ["CPU", "Memory (resident)", "vCPU steal"] {
        let r = prom.wait_for(
            &by_title(title),
            |r| r.iter().any(|s| s["metric"]["id"] == "170" && s["metric"]["name"] == "test170"),
            limit,
        );
        assert!(!r.is_empty(), "{title}");
    }
    let vms = prom.query(&fill(&by_title("Running VMs")));
    assert_eq!(vms.first().map(value), Some(1.0), "{vms:?}");
}
