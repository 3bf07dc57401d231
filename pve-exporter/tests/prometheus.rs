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

/// The guest table and node panels of Grafana 10347 ("Proxmox via Prometheus"), built for
/// prometheus-pve-exporter, with `$instance` filled in: (query, whether only running guests
/// answer it).
const PPE_DASHBOARD: &[(&str, bool)] = &[
    (r#"sum by (id, name, type) (pve_guest_info{instance="$instance",template!="1"})"#, false),
    (r#"sum by (id) (pve_up{instance="$instance"} and on (id, instance) pve_guest_info{template!="1"})"#, false),
    (
        r#"sum by (id) (pve_cpu_usage_limit{instance="$instance"} and on (id, instance) pve_guest_info{template!="1"})"#,
        false,
    ),
    (
        r#"sum by (id) (pve_memory_size_bytes{instance="$instance"} and on (id, instance) pve_guest_info{template!="1"})"#,
        false,
    ),
    (
        r#"sum by (id) (pve_memory_usage_bytes{instance="$instance"} / pve_memory_size_bytes and on (id, instance) pve_guest_info{template!="1"} and on (id) pve_up==1)"#,
        true,
    ),
    (
        r#"sum by (id) (pve_disk_size_bytes{instance="$instance"} and on (id, instance) pve_guest_info{template!="1"})"#,
        false,
    ),
    (
        r#"sum by (id) ((pve_cpu_usage_ratio{instance="$instance"} / pve_cpu_usage_limit) and on (id, instance) pve_guest_info{template!="1"} and on(id) pve_up==1)"#,
        true,
    ),
    (
        r#"sum by (id) ((rate(pve_disk_write_bytes{instance="$instance"}[5m]) + rate(pve_disk_read_bytes{instance="$instance"}[5m])) and on (id, instance) pve_guest_info{template!="1"} and on(id) pve_up==1)"#,
        true,
    ),
    (
        r#"sum by (id) ((rate(pve_network_receive_bytes{instance="$instance"}[5m]) + rate(pve_network_transmit_bytes{instance="$instance"}[5m])) and on (id, instance) pve_guest_info{template!="1"} and on(id) pve_up==1)"#,
        true,
    ),
    (r#"pve_uptime_seconds{instance="$instance"} * on(id, instance) group_left(name) pve_guest_info"#, false),
    (
        r#"rate(pve_network_transmit_bytes_total{instance="$instance"}[1m]) * on(id, instance) group_left(name) pve_guest_info"#,
        false,
    ),
    // PPE has it for guests whose config sets onboot (the test's three do).
    (r#"pve_onboot_status{instance="$instance"} * on(id, instance) group_left(name) pve_guest_info"#, false),
    (
        r#"sum by (id, instance) (pve_lock_state{instance="$instance"}) * on(id, instance) group_left(name) pve_guest_info"#,
        false,
    ),
    (
        r#"sum by (id, instance) (pve_ha_state{instance="$instance",id!~"node/.*"}) * on(id, instance) group_left(name) pve_guest_info"#,
        false,
    ),
];

/// The node and storage panels: each must answer for this node or its storage.
const PPE_NODE_PANELS: &[&str] = &[
    r#"pve_up{instance="$instance",id=~"node/.*"} * on(id) group_left(name) pve_node_info"#,
    r#"pve_cpu_usage_ratio{instance="$instance",id=~"node/.*"}"#,
    r#"pve_memory_usage_bytes{instance="$instance",id=~"node/.*"} / pve_memory_size_bytes"#,
    r#"pve_disk_usage_bytes{instance="$instance",id=~"storage/.*"} / pve_disk_size_bytes * on(id, instance) group_left(storage, plugintype) pve_storage_info"#,
    r#"pve_storage_shared{instance="$instance"} * on(id, instance) group_left(storage) pve_storage_info"#,
];

/// prometheus-pve-exporter's dashboards on this exporter's local data: a real Prometheus
/// scrapes a node with a running KVM guest, a running container (laid out as PVE's LXC does)
/// and a stopped VM, and every query of the dashboard's guest table returns each guest it
/// should (the running ones where the query asks `pve_up==1`).
#[test]
fn prometheus_pve_exporter_dashboards_see_every_guest() {
    common::require_privileges();
    let (vm, ct, stopped) = (171u32, 972u32, 173u32);
    let root = common::host_root(&[vm, ct, stopped]);
    let r = root.path();
    std::fs::remove_file(r.join(format!("etc/pve/qemu-server/{ct}.conf"))).expect("rm");
    std::fs::create_dir_all(r.join("etc/pve/lxc")).expect("mkdir");
    std::fs::write(
        r.join(format!("etc/pve/lxc/{ct}.conf")),
        format!(
            "hostname: ct{ct}\nmemory: 128\nrootfs: local:{ct}/vm-{ct}-disk-0.raw,size=16M\nonboot: 1\n\
                 net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:09:72,type=veth\n"
        ),
    )
    .expect("ct conf");
    std::fs::write(r.join(format!("etc/pve/qemu-server/{vm}.conf")), "name: vm171\nmemory: 32\ncores: 2\nonboot: 0\n")
        .expect("vm");
    std::fs::write(
        r.join(format!("etc/pve/qemu-server/{stopped}.conf")),
        "name: off173\nmemory: 64\nlock: backup\nonboot: 1\n",
    )
    .expect("stopped");
    std::fs::create_dir_all(r.join("var/lib/vz")).expect("mkdir");
    std::fs::write(r.join("etc/pve/storage.cfg"), "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n")
        .expect("storage.cfg");
    let _guest = common::Guest::start(vm, 2, 50, r);
    let _ct = common::Ct::start(ct, &["--veth", "--rootfs-mib", "16"]);
    common::wait_until_up(&format!("veth{ct}p0"));
    common::send_frames(&format!("veth{ct}p0"), 3, 200);
    let exporter = ops::Exporter::start(r, &["--ebpf", "off", "--collector.ppe"], &[]);
    let prom = Prometheus::start(&format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: pve\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        exporter.port
    ));
    let limit = Duration::from_secs(60);
    let instance = format!("127.0.0.1:{}", exporter.port);
    let fill = |q: &str| q.replace("$instance", &instance);
    // Enough samples for rate() over every window used.
    prom.wait_for("count_over_time(pve_up{job=\"pve\"}[1m])", |r| r.iter().all(|s| value(s) >= 3.0), limit);
    let all: BTreeSet<String> = [format!("qemu/{vm}"), format!("lxc/{ct}"), format!("qemu/{stopped}")].into();
    let running: BTreeSet<String> = [format!("qemu/{vm}"), format!("lxc/{ct}")].into();
    for (q, running_only) in PPE_DASHBOARD {
        let want = if *running_only { &running } else { &all };
        let ids = |r: &[Value]| -> BTreeSet<String> {
            r.iter().filter_map(|s| s["metric"]["id"].as_str().map(str::to_string)).collect()
        };
        let r = prom.wait_for(&fill(q), |r| want.is_subset(&ids(r)), limit);
        let got = ids(&r);
        assert!(got.iter().all(|i| all.contains(i) || i.starts_with("node/")), "{q}: {got:?}\n{}", exporter.logs());
    }
    for q in PPE_NODE_PANELS {
        prom.wait_for(&fill(q), |r| !r.is_empty(), limit);
    }
    // The figures behind them: the guests' names and state as PVE would show them.
    let info = prom.query(&fill(r#"pve_guest_info{instance="$instance"}"#));
    let name_of = |id: &str| info.iter().find(|s| s["metric"]["id"] == id).map(|s| s["metric"]["name"].clone());
    assert_eq!(name_of(&format!("lxc/{ct}")), Some(Value::from(format!("ct{ct}"))));
    assert_eq!(name_of(&format!("qemu/{stopped}")), Some(Value::from("off173")));
    let up = prom.query(&fill(r#"pve_up{instance="$instance",id=~"qemu/.*|lxc/.*"}"#));
    let up_of = |id: &str| up.iter().find(|s| s["metric"]["id"] == id).map(value);
    assert_eq!(
        (up_of(&format!("qemu/{vm}")), up_of(&format!("lxc/{ct}")), up_of(&format!("qemu/{stopped}"))),
        (Some(1.0), Some(1.0), Some(0.0))
    );
    let tx = prom.query(&fill(&format!(r#"pve_network_transmit_bytes_total{{instance="$instance",id="lxc/{ct}"}}"#)));
    assert_eq!(tx.first().map(value), Some(600.0), "the container sent 3 frames of 200 bytes: {tx:?}");
}
