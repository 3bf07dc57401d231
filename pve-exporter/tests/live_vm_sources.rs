//! Live tests of the non-PVE VM sources: real test guests presented as libvirt domains (pid
//! file and status XML written here) and as plain QEMU processes, with real network devices
//! (a veth pair standing in for each tap: the host sends known frames through it) and the
//! eBPF programs counting each guest's port writes. Root and /dev/kvm needed; vmid locks 250-261.

mod common;

use std::process::Command;

use common::{Daemon, Guest, libvirt_root, plain_root, require_privileges, sample, send_frames, wait_until_up};

/// A veth pair `name` / `<name>p` without IPv6 (no router solicitations: the counters see only
/// the test's frames); removed when dropped.
struct Veth(String);

impl Veth {
    fn new(name: &str) -> Veth {
        let peer = format!("{name}p");
        let _ = Command::new("ip").args(["link", "del", name]).status();
        let run = |args: &[&str]| {
            let st = Command::new(args[0]).args(&args[1..]).status().expect("run ip/sysctl");
            assert!(st.success(), "{args:?}: {st}");
        };
        run(&["ip", "link", "add", name, "type", "veth", "peer", "name", &peer]);
        let v = Veth(name.to_string());
        for dev in [name, peer.as_str()] {
            run(&["sysctl", "-q", "-w", &format!("net.ipv6.conf.{dev}.disable_ipv6=1")]);
            run(&["ip", "link", "set", dev, "up"]);
        }
        wait_until_up(name);
        wait_until_up(&peer);
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn sys_counter(ifname: &str, file: &str) -> f64 {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/{file}"))
        .expect("counter")
        .trim()
        .parse()
        .expect("number")
}

/// The guest's view of `ifname` in scrape `m` against the frames sent: `to_guest` frames of
/// `to_len` bytes went out of the host side, `from_guest` of `from_len` came in.
fn check_guest_view(
    m: &str,
    id: &str,
    ifname: &str,
    (to_guest, to_len): (usize, usize),
    (from_guest, from_len): (usize, usize),
) {
    let get = |name| sample(m, name, &[("id", id), ("ifname", ifname)]);
    let sys = format!(
        "sysfs: rx {} B / {} pkts, tx {} B / {} pkts",
        sys_counter(ifname, "rx_bytes"),
        sys_counter(ifname, "rx_packets"),
        sys_counter(ifname, "tx_bytes"),
        sys_counter(ifname, "tx_packets")
    );
    assert_eq!(get("pve_kvm_guest_network_receive_bytes_total"), Some((to_guest * to_len) as f64), "{sys}");
    assert_eq!(get("pve_kvm_guest_network_receive_packets_total"), Some(to_guest as f64), "{sys}");
    assert_eq!(get("pve_kvm_guest_network_transmit_bytes_total"), Some((from_guest * from_len) as f64), "{sys}");
    assert_eq!(get("pve_kvm_guest_network_transmit_packets_total"), Some(from_guest as f64), "{sys}");
    // Beside the raw tap view, swapped.
    assert_eq!(get("pve_kvm_nic_tx_bytes_total"), Some((to_guest * to_len) as f64), "{sys}");
    assert_eq!(get("pve_kvm_nic_rx_packets_total"), Some(from_guest as f64), "{sys}");
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn test_guests_as_libvirt_domains() {
    require_privileges();
    let root = libvirt_root(&[250, 251]);
    let _tap = Veth::new("pvet250");
    // The programs must be attached before the guests write.
    let daemon = Daemon::start(root.path(), &["--ebpf", "on"]);
    let uuid = "6a0c2f1e-0250-4c57-9d1c-3f6f3c2f2a10";
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            let ident = args(&["-name", "guest=lv250,debug-threads=on", "-uuid", uuid]);
            Guest::start_as("/usr/bin/qemu-system-x86_64", &ident, 250, 2, 500, root.path())
        });
        let b = s.spawn(|| {
            let ident = args(&["-name", "guest=lv251,debug-threads=on"]);
            Guest::start_as("/usr/bin/qemu-system-x86_64", &ident, 251, 1, 300, root.path())
        });
        (a.join().expect("guest 250"), b.join().expect("guest 251"))
    });
    let run = root.path().join("run/libvirt/qemu");
    std::fs::write(run.join("lv250.pid"), a.pid.to_string()).expect("pid file");
    std::fs::write(
        run.join("lv250.xml"),
        format!(
            "<domstatus state='running' reason='booted' pid='{pid}'>\n  <domain type='kvm' id='7'>\n    <name>lv250</name>\n    \
             <uuid>{uuid}</uuid>\n    <metadata>\n      <nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\">\n        \
             <nova:name>live-1</nova:name>\n        <nova:flavor name=\"t1.micro\"><nova:vcpus>2</nova:vcpus></nova:flavor>\n        \
             <nova:owner><nova:user uuid=\"u\">bob</nova:user><nova:project uuid=\"p-250\">qa</nova:project></nova:owner>\n      \
             </nova:instance>\n    </metadata>\n    <memory unit='MiB'>64</memory>\n    <vcpu placement='static'>2</vcpu>\n    \
             <devices>\n      <interface type='ethernet'>\n        <mac address='fa:16:3e:00:02:50'/>\n        \
             <target dev='pvet250'/>\n        <model type='virtio'/>\n      </interface>\n    </devices>\n  </domain>\n</domstatus>\n",
            pid = a.pid
        ),
    )
    .expect("xml");
    std::fs::write(run.join("lv251.pid"), b.pid.to_string()).expect("pid file");
    std::fs::write(
        run.join("lv251.xml"),
        "<domstatus pid='0'><domain><name>lv251</name><memory unit='KiB'>32768</memory><vcpu>1</vcpu></domain></domstatus>",
    )
    .expect("xml");
    // Known traffic: 10 frames of 100 bytes to the guest (out of the host's side), 7 of 80 from it.
    send_frames("pvet250", 10, 100);
    send_frames("pvet250p", 7, 80);

    let m = daemon.get("/metrics");
    assert_eq!(sample(&m, "pve_exporter_ebpf_enabled", &[]), Some(1.0), "{m}");
    assert!(
        m.contains(&format!(
            "pve_kvm_libvirt_info{{id=\"lv250\",name=\"lv250\",uuid=\"{uuid}\",nova_instance=\"live-1\",nova_project=\"qa\",nova_project_id=\"p-250\",nova_flavor=\"t1.micro\"}} 1"
        )),
        "{m}"
    );
    assert!(m.contains(&format!("pve_kvm_info{{id=\"lv251\",name=\"lv251\",cpu=\"host\",pid=\"{}\"", b.pid)), "{m}");
    // Allocation from the XML (64 MiB, not the -m 32 of the command line).
    let get = |name, id| sample(&m, name, &[("id", id)]);
    assert_eq!(get("pve_kvm_vcores", "lv250"), Some(2.0));
    assert_eq!(get("pve_kvm_maxmem_bytes", "lv250"), Some(64.0 * 1048576.0));
    assert_eq!(get("pve_kvm_maxmem_bytes", "lv251"), Some(32.0 * 1048576.0));
    for (id, alloc) in [("lv250", 64.0 * 1048576.0), ("lv251", 32.0 * 1048576.0)] {
        let rss = sample(&m, "pve_kvm_memory_extended", &[("id", id), ("type", "vmrss")]).expect("vmrss");
        assert!(rss > 0.0);
        assert_eq!(get("pve_kvm_memory_utilisation_ratio", id), Some(rss / alloc), "{id}");
        assert!(get("pve_kvm_cpu_seconds_total", id).is_some(), "{id}");
    }
    // eBPF per VM, exactly: writes × vCPUs port writes.
    let pio = |id| sample(&m, "pve_kvm_tracepoint_events_total", &[("id", id), ("event", "kvm_pio")]);
    assert_eq!(pio("lv250"), Some(1000.0), "{m}");
    assert_eq!(pio("lv251"), Some(300.0), "{m}");
    check_guest_view(&m, "lv250", "pvet250", (10, 100), (7, 80));
    // No monitor is asked for libvirt's domains; everything worked.
    for c in ["kvm", "qm", "nic", "disk", "ebpf"] {
        assert_eq!(sample(&m, "pve_exporter_collector_success", &[("collector", c)]), Some(1.0), "{c}: {m}");
    }

    // A domain that stops is gone from the next scrape.
    drop(b);
    let m = daemon.get("/metrics");
    assert!(!m.contains("id=\"lv251\""), "{m}");
    assert_eq!(sample(&m, "pve_kvm_tracepoint_events_total", &[("id", "lv250"), ("event", "kvm_pio")]), Some(1000.0));
    drop(a);
}

#[test]
fn test_guests_as_plain_qemu_processes() {
    require_privileges();
    let root = plain_root(&[260, 261]);
    let _tap = Veth::new("pvet260");
    let daemon = Daemon::start(root.path(), &["--ebpf", "on"]);
    let ident = args(&[
        "-name",
        "plain260,debug-threads=on",
        "-uuid",
        "6a0c2f1e-0260-4c57-9d1c-3f6f3c2f2a10",
        "-netdev",
        "tap,id=n0,ifname=pvet260,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:00:02:60",
    ]);
    let g = Guest::start_as("/usr/bin/qemu-system-x86_64", &ident, 260, 2, 400, root.path());
    send_frames("pvet260", 3, 200);
    send_frames("pvet260p", 5, 60);
    let m = daemon.get("/metrics");
    assert!(
        m.contains(&format!("pve_kvm_info{{id=\"plain260\",name=\"plain260\",cpu=\"host\",pid=\"{}\"", g.pid)),
        "{m}"
    );
    let get = |name| sample(&m, name, &[("id", "plain260")]);
    assert_eq!(get("pve_kvm_vcores"), Some(2.0));
    assert_eq!(get("pve_kvm_maxmem_bytes"), Some(32.0 * 1048576.0));
    let rss = sample(&m, "pve_kvm_memory_extended", &[("id", "plain260"), ("type", "vmrss")]).expect("vmrss");
    assert_eq!(get("pve_kvm_memory_utilisation_ratio"), Some(rss / (32.0 * 1048576.0)));
    assert_eq!(sample(&m, "pve_kvm_tracepoint_events_total", &[("id", "plain260"), ("event", "kvm_pio")]), Some(800.0));
    assert!(
        m.contains("pve_kvm_nic_info{id=\"plain260\",ifname=\"pvet260\",netdev=\"n0\",queues=\"1\",type=\"tap\",model=\"virtio-net-pci\",macaddr=\"52:54:00:00:02:60\"} 1"),
        "{m}"
    );
    check_guest_view(&m, "plain260", "pvet260", (3, 200), (5, 60));
    assert!(!m.contains("pve_kvm_libvirt_info{"), "{m}");
    drop(g);
    let m = daemon.get("/metrics");
    assert!(!m.contains("id=\"plain260\""), "{m}");
}
