//! The fuzz targets' bodies, one function each: the libFuzzer targets (`<name>.rs`) call them,
//! and so does the scaling check (`pve-exporter/benches/scaling.rs`), which times each on inputs
//! ten times larger. Every function takes outside bytes and must not panic, hang or abort.

#![allow(dead_code, unused_imports)]

use super::common::*;

/// A target's body: outside bytes in, nothing out.
pub type Body = fn(&[u8]);

/// Every target by name, for the scaling check.
pub const ALL: &[(&str, Body)] = &[
    ("agent_replies", agent_replies),
    ("api_secrets", api_secrets),
    ("calendar_event", calendar_event),
    ("cgroup_files", cgroup_files),
    ("cluster_files", cluster_files),
    ("guest_config", guest_config),
    ("ha_status", ha_status),
    ("hmp_info_block", hmp_info_block),
    ("hmp_info_blockstats", hmp_info_blockstats),
    ("hmp_info_network", hmp_info_network),
    ("jobs_cfg", jobs_cfg),
    ("kernel_small_files", kernel_small_files),
    ("libvirt_xml", libvirt_xml),
    ("lvm_output", lvm_output),
    ("mountinfo", mountinfo),
    ("netlink_dump", netlink_dump),
    ("proc_events", proc_events),
    ("proc_files", proc_files),
    ("pve_api", pve_api),
    ("qemu_cmdline", qemu_cmdline),
    ("qm_transcript", qm_transcript),
    ("qmp_replies", qmp_replies),
    ("replication_cfg", replication_cfg),
    ("replication_state", replication_state),
    ("storage_cfg", storage_cfg),
    ("task_index", task_index),
    ("task_log", task_log),
    ("tracefs_format", tracefs_format),
    ("user_cfg", user_cfg),
    ("web_config", web_config),
    ("zfs_output", zfs_output),
];

pub fn agent_replies(data: &[u8]) {
    let _ = agent::find_sync(data, 7);
    for line in data.split(|b| *b == b'\n') {
        if let Ok(Ok(v)) = agent::parse_reply(line, "fuzz") {
            let _ = agent::parse_fsinfo(&v);
        }
    }
}

pub fn api_secrets(data: &[u8]) {
    let s = text(data);
    let _ = api::Token::parse(&s);
    let _ = api::parse_pem_certs(&s);
}

pub fn calendar_event(data: &[u8]) {
    if let Ok(e) = calendar::parse(&text(data)) {
        let _ = e.next_after(1_772_445_900, &calendar::Utc);
    }
}

pub fn cgroup_files(data: &[u8]) {
    let s = text(data);
    // Looked up in the text as it is asked: ask it.
    let k = cgroup::parse_flat_keyed(&s);
    let _ = (k.get("oom_kill"), k.get_many(["anon", "file", "kernel", "slab"]), k.len());
    let _ = cgroup::parse_limit(&s);
    let _ = cgroup::parse_cpu_max(&s);
    let _ = cgroup::parse_io_stat(&s);
    let _ = cgroup::parse_blkio(&s);
    let _ = pressure::parse_pressure(&s);
}

pub fn cluster_files(data: &[u8]) {
    let s = text(data);
    let _ = cluster::parse_vmlist(&s);
    let _ = cluster::parse_members(&s);
}

pub fn guest_config(data: &[u8]) {
    let s = text(data);
    let c = guest_config::parse_guest_config(&s);
    for (_, v) in c.main.iter() {
        let _ = guest_config::parse_size(v);
    }
}

pub fn ha_status(data: &[u8]) {
    let s = text(data);
    let _ = ha::parse_manager_status(&s);
    let _ = ha::parse_lrm_status(&s);
    let _ = ha::parse_resources_cfg(&s);
}

pub fn hmp_info_block(data: &[u8]) {
    for d in hmp::parse_info_block(&text(data)) {
        let _ = redact::drive_path(&format!("{d:?}"));
    }
}

pub fn hmp_info_blockstats(data: &[u8]) {
    let s = text(data);
    let _ = hmp::parse_info_blockstats(&s);
    let _ = hmp::parse_info_status(&s);
    let _ = balloon::parse_info_balloon(&s);
}

pub fn hmp_info_network(data: &[u8]) {
    let _ = hmp::parse_info_network(&text(data));
}

pub fn jobs_cfg(data: &[u8]) {
    let (jobs, _) = vzdump::parse_jobs_cfg(&text(data));
    for j in &jobs {
        let _ = j.includes("100", "pve1", Some("pool"));
    }
}

pub fn kernel_small_files(data: &[u8]) {
    let s = text(data);
    let _ = kvm_debugfs::parse_vm_dir_name(&s);
    let _ = kvm_debugfs::parse_vcpu_dir_name(&s);
    let _ = kvm_debugfs::parse_stat_value(&s);
    let _ = sysfs::parse_counter(&s);
    let _ = sysfs::parse_cpulist(&s);
}

pub fn libvirt_xml(data: &[u8]) {
    let _ = libvirt::parse_domain_xml(&text(data));
}

pub fn lvm_output(data: &[u8]) {
    let s = text(data);
    let _ = lvm::parse_vgs_json(&s);
    let _ = lvm::parse_lvs_json(&s);
}

pub fn mountinfo(data: &[u8]) {
    let s = text(data);
    let _ = cgroup::parse_cgroup_mounts(&s);
    let _ = statvfs::parse_mountinfo(&s);
}

pub fn netlink_dump(data: &[u8]) {
    let mut dump = netlink::Dump::default();
    let _ = netlink::parse_part(data, 1, 0, &|_| true, &mut dump);
    let (mut rows, mut interrupted) = (Vec::new(), false);
    let _ = netlink::parse_stats_part(data, 1, 0, &mut rows, &mut interrupted);
}

pub fn proc_events(data: &[u8]) {
    let mut pids = std::collections::HashMap::new();
    events::parse_events(data, &mut pids);
}

pub fn proc_files(data: &[u8]) {
    let s = text(data);
    let _ = process::parse_stat(data, 100);
    let _ = process::parse_status(&s);
    let _ = process::parse_status_uids(&s);
    let _ = process::parse_io(data);
    let _ = process::parse_memtotal(data);
    let _ = process::parse_schedstat(&s);
    let _ = node::parse_loadavg(&s);
    let _ = node::swap_from_meminfo(data);
    let _ = node::memory_from_meminfo(data);
    let _ = node::vmstat_value(data, "oom_kill");
    let _ = node::parse_pages_sharing(&s);
    let _ = node::secure_boot_from_efivar(data);
}

pub fn pve_api(data: &[u8]) {
    let _ = api::data(data);
    let _ = api::parse_nodes(data);
    let _ = api::parse_node_status(data);
    let _ = api::parse_qemu_pressure(data);
    let _ = api::parse_ha_manager_status(data);
    let _ = api::parse_ha_resources(data);
    let _ = api::parse_disks(data);
}

pub fn qemu_cmdline(data: &[u8]) {
    let args = process::parse_cmdline(data);
    let _ = process::parse_qemu_cmdline(&args);
    for a in &args {
        let _ = process::parse_qemu_size(a, 1 << 20);
    }
}

pub fn qm_transcript(data: &[u8]) {
    let cleaned = qm::clean_terminal_output(data);
    for c in ["info block", "info network", "info blockstats", "info status"] {
        let _ = qm::command_output(&cleaned, c);
    }
}

pub fn qmp_replies(data: &[u8]) {
    let s = text(data);
    let _ = qmp::blockstats_rows(&s);
    let _ = qmp::run_state(&s);
    let _ = qmp::virtual_sizes(&s);
    let _ = balloon::parse_query_balloon(&s);
    let _ = balloon::parse_guest_stats(&s);
}

pub fn replication_cfg(data: &[u8]) {
    let cfg = replication::parse_config(&text(data));
    for j in &cfg.jobs {
        let _ = replication::local_job(j, "pve1", Some("pve1"));
        let _ = replication::next_sync(j, None, Some(true), &calendar::Utc);
    }
}

pub fn replication_state(data: &[u8]) {
    let _ = replication::parse_state(&text(data));
}

pub fn storage_cfg(data: &[u8]) {
    for st in storage_cfg::parse_storage_cfg(&text(data)).storages {
        let _ = st.sizing();
        let _ = (st.content(), st.nodes(), st.path());
    }
}

pub fn task_index(data: &[u8]) {
    let s = text(data);
    let _ = tasks::parse_index(&s);
    let _ = tasks::parse_active(&s);
    for w in s.split_whitespace() {
        let _ = tasks::log_path(w);
    }
}

pub fn task_log(data: &[u8]) {
    let s = text(data);
    let _ = vzdump::parse_task_log(&s);
    for l in s.lines() {
        let _ = vzdump::parse_archive_name(l);
    }
}

pub fn tracefs_format(data: &[u8]) {
    let s = text(data);
    if let Ok(f) = tracefs::parse_format(&s) {
        let _ = tracefs::print_symbolic_tables(&f.print_fmt, "exit_reason");
        let _ = ebpf::ExitReasons::from_print_fmt(&f.print_fmt, 1);
    }
}

pub fn user_cfg(data: &[u8]) {
    let s = text(data);
    let _ = config::parse_user_cfg_pools(&s);
    let _ = config::split_list(&s);
}

pub fn web_config(data: &[u8]) {
    let s = text(data);
    let _ = pve_exporter::web::parse(&s, std::path::Path::new("/etc/pve-exporter"));
    let _ = pve_exporter::web::parse_basic(&s);
}

pub fn zfs_output(data: &[u8]) {
    let s = text(data);
    let _ = zfs::parse_zfs_get(&s);
    let _ = zfs::parse_zpool_list(&s);
}
