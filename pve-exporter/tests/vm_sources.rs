//! Whole scrapes of the non-PVE fixture hosts (`fixtures/hosts/libvirt-nova`, `plain-qemu`;
//! see fixtures/hosts/README.md) through the library API, against golden files
//! (`fixtures/golden/<host>.prom`, timings set to 0 and `ebpf_programs` to `absent`), and
//! targeted checks of what each source must report. Regenerate the golden files with
//! `UPDATE_GOLDEN=1 cargo test -p pve-exporter --test vm_sources` and review the diff.

mod fixture_scrape;

use std::sync::Arc;

use fixture_scrape::{FIXTURES, check_golden, copy_tree, normalize, tree};
use pve_exporter::{
    collector::Engine,
    config::{Config, VmSourceMode},
    exposition::{self, Format},
};

fn scrape(host: &str, extra: &[&str]) -> String {
    let root = tree(host);
    let mut args = vec!["--root", root.as_str()];
    args.extend_from_slice(extra);
    fixture_scrape::scrape(&args, Format::Text)
}

fn golden(host: &str) {
    check_golden(&normalize(&scrape(host, &[]), |_| false), &format!("{host}.prom"));
}

/// The value of the first sample of `name` whose labels include `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    fixture_scrape::series(text, name, labels).first().map(fixture_scrape::Sample::num)
}

fn ids(text: &str, family: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.split("id=\"").nth(1)?.split('"').next().map(str::to_string))
        .collect()
}

#[test]
fn libvirt_nova_golden() {
    golden("libvirt-nova");
}

#[test]
fn plain_qemu_golden() {
    golden("plain-qemu");
}

#[test]
fn auto_picks_the_source_by_what_the_host_has() {
    let engine = |host: &str, mode: &str| {
        let root = format!("{FIXTURES}/hosts/{host}");
        Engine::new(Config::from_args(["x", "--root", &root, "--ebpf", "off", "--vm-source", mode]).unwrap())
            .unwrap()
            .vm_source()
    };
    assert_eq!(engine("pve-basic", "auto"), VmSourceMode::Pve);
    assert_eq!(engine("libvirt-nova", "auto"), VmSourceMode::Libvirt);
    assert_eq!(engine("plain-qemu", "auto"), VmSourceMode::Qemu);
    assert_eq!(engine("pve-basic", "qemu"), VmSourceMode::Qemu);
}

#[test]
fn libvirt_domains_with_and_without_nova() {
    let t = scrape("libvirt-nova", &[]);
    // Domains by name; the QEMU process libvirt did not start as plain QEMU; the domain whose
    // process is gone is not reported; pid 2 (a kernel thread) neither.
    assert_eq!(ids(&t, "pve_kvm_info"), ["instance-0000002a", "plain-vm", "scratch"]);
    let info =
        |id: &str| t.lines().find(|l| l.starts_with(&format!("pve_kvm_libvirt_info{{id=\"{id}\""))).map(str::to_string);
    assert_eq!(
        info("instance-0000002a").as_deref(),
        Some(
            "pve_kvm_libvirt_info{id=\"instance-0000002a\",name=\"instance-0000002a\",uuid=\"9f2ac8d4-5b0e-4c57-9d1c-3f6f3c2f2a10\",\
             nova_instance=\"web-1\",nova_project=\"webteam\",nova_project_id=\"5e6f7a8b9c0d4e1f2a3b4c5d6e7f8a9b\",nova_flavor=\"m1.medium\"} 1"
        )
    );
    assert_eq!(
        info("plain-vm").as_deref(),
        Some(
            "pve_kvm_libvirt_info{id=\"plain-vm\",name=\"plain-vm\",uuid=\"2c1f6b3e-8d4a-4e7b-a1f0-5b6c7d8e9f01\",\
             nova_instance=\"\",nova_project=\"\",nova_project_id=\"\",nova_flavor=\"\"} 1"
        )
    );
    assert_eq!(info("scratch"), None, "not a libvirt domain");
    // Allocation from the XML (current vCPUs, <memory>), from the command line for plain QEMU.
    let get = |name, id| sample(&t, name, &[("id", id)]);
    assert_eq!(get("pve_kvm_vcores", "instance-0000002a"), Some(4.0));
    assert_eq!(get("pve_kvm_maxmem_bytes", "instance-0000002a"), Some(4294967296.0));
    assert_eq!(get("pve_kvm_vcores", "plain-vm"), Some(2.0));
    assert_eq!(get("pve_kvm_maxmem_bytes", "plain-vm"), Some(17179869184.0));
    assert_eq!(get("pve_kvm_vcores", "scratch"), Some(2.0));
    // RSS 3276800 kB of 4 GiB; 6553600 kB of 16 GiB; 1638400 kB of 2 GiB.
    assert_eq!(get("pve_kvm_memory_utilisation_ratio", "instance-0000002a"), Some(0.78125));
    assert_eq!(get("pve_kvm_memory_utilisation_ratio", "plain-vm"), Some(0.390625));
    assert_eq!(get("pve_kvm_memory_utilisation_ratio", "scratch"), Some(0.78125));
    assert_eq!(get("pve_kvm_cpu_seconds_total", "instance-0000002a"), Some(1234.0), "user mode first");
    // NICs from the XML; the guest's view swaps the tap's counters.
    let nic = |name, id, ifname| sample(&t, name, &[("id", id), ("ifname", ifname)]);
    let tap = ("instance-0000002a", "tap1234abcd-01");
    assert_eq!(nic("pve_kvm_nic_rx_bytes_total", tap.0, tap.1), Some(1e6));
    assert_eq!(nic("pve_kvm_guest_network_transmit_bytes_total", tap.0, tap.1), Some(1e6));
    assert_eq!(nic("pve_kvm_guest_network_receive_bytes_total", tap.0, tap.1), Some(5e6));
    assert_eq!(nic("pve_kvm_guest_network_transmit_packets_total", tap.0, tap.1), Some(1000.0));
    assert_eq!(nic("pve_kvm_guest_network_receive_packets_total", tap.0, tap.1), Some(4000.0));
    assert_eq!(nic("pve_kvm_guest_network_receive_bytes_total", "plain-vm", "vnet0"), Some(4096.0));
    assert!(t.contains(
        "pve_kvm_nic_info{id=\"plain-vm\",ifname=\"vnet1\",netdev=\"net1\",queues=\"1\",type=\"network\",model=\"virtio\",macaddr=\"52:54:00:ab:cd:f0\"} 1"
    ));
    assert_eq!(nic("pve_kvm_nic_rx_bytes_total", "plain-vm", "vnet1"), None, "tap gone: no counters");
    // Disks from the XML: qcow2 virtual size from its header, raw by length, rbd without size.
    let disk = |id, d| sample(&t, "pve_kvm_disk_size_bytes", &[("id", id), ("disk_name", d)]);
    assert_eq!(disk("instance-0000002a", "vda"), Some((40u64 << 30) as f64));
    assert_eq!(disk("instance-0000002a", "vdb"), None);
    assert_eq!(disk("plain-vm", "sda"), Some(65536.0));
    assert!(
        t.contains("disk_name=\"vdb\",block_id=\"\",disk_path=\"rbd:volumes/volume-7d3f\",disk_type=\"rbd\""),
        "{t}"
    );
    // No monitor was asked, no PVE config read; every collector of the VMs worked.
    for c in ["kvm", "qm", "nic", "disk"] {
        assert_eq!(sample(&t, "pve_exporter_collector_success", &[("collector", c)]), Some(1.0), "{c}");
    }
    assert_eq!(sample(&t, "pve_exporter_collector_success", &[("collector", "pve_config")]), None);
}

#[test]
fn a_broken_domain_xml_costs_only_that_domain() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    copy_tree(&std::path::Path::new(FIXTURES).join("hosts/libvirt-nova"), &root);
    std::fs::write(root.join("run/libvirt/qemu/plain-vm.xml"), "<domstatus pid='2200'><domain><name>plain-vm</na")
        .unwrap();
    let engine =
        Engine::new(Config::from_args(["x", "--root", root.to_str().unwrap(), "--ebpf", "off"]).unwrap()).unwrap();
    let t = exposition::render(Arc::new(engine.collect()), Format::Text);
    // The process is still QEMU: it is reported, as plain QEMU (its -name), without the XML's facts.
    assert_eq!(ids(&t, "pve_kvm_libvirt_info"), ["instance-0000002a"]);
    assert_eq!(ids(&t, "pve_kvm_info"), ["instance-0000002a", "plain-vm", "scratch"]);
    assert_eq!(sample(&t, "pve_exporter_collector_success", &[("collector", "kvm")]), Some(0.0));
    // Fixed: the next scrape has it again, and a VM that stopped is gone at once.
    std::fs::copy(
        std::path::Path::new(FIXTURES).join("hosts/libvirt-nova/run/libvirt/qemu/plain-vm.xml"),
        root.join("run/libvirt/qemu/plain-vm.xml"),
    )
    .unwrap();
    std::fs::remove_dir_all(root.join("proc/2100")).unwrap();
    let t = exposition::render(Arc::new(engine.collect()), Format::Text);
    assert_eq!(ids(&t, "pve_kvm_libvirt_info"), ["plain-vm"]);
    assert!(!t.contains("instance-0000002a"), "series of a stopped VM vanish");
    assert_eq!(sample(&t, "pve_exporter_collector_success", &[("collector", "kvm")]), Some(1.0));
}

#[test]
fn plain_qemu_processes() {
    let t = scrape("plain-qemu", &[]);
    // -name, else the pid; sshd is not QEMU.
    assert_eq!(ids(&t, "pve_kvm_info"), ["3200", "web"]);
    let get = |name, id| sample(&t, name, &[("id", id)]);
    assert_eq!(get("pve_kvm_vcores", "web"), Some(4.0));
    assert_eq!(get("pve_kvm_maxmem_bytes", "web"), Some(4294967296.0));
    assert_eq!(get("pve_kvm_memory_utilisation_ratio", "web"), Some(0.78125));
    assert_eq!(get("pve_kvm_vcores", "3200"), Some(1.0));
    assert_eq!(get("pve_kvm_memory_utilisation_ratio", "3200"), Some(0.78125));
    let nic = |name| sample(&t, name, &[("id", "web"), ("ifname", "qtap0")]);
    assert_eq!(nic("pve_kvm_guest_network_receive_bytes_total"), Some(654321.0));
    assert_eq!(nic("pve_kvm_guest_network_transmit_bytes_total"), Some(123456.0));
    assert_eq!(nic("pve_kvm_guest_network_receive_packets_total"), Some(500.0));
    assert_eq!(nic("pve_kvm_guest_network_transmit_packets_total"), Some(100.0));
    assert_eq!(nic("pve_kvm_nic_tx_bytes_total"), Some(654321.0));
    assert_eq!(sample(&t, "pve_kvm_disk_size_bytes", &[("id", "web"), ("disk_name", "disk0")]), Some(8192.0));
    assert!(!t.contains("pve_kvm_libvirt_info{"));
}
