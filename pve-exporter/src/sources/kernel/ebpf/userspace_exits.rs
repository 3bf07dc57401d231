//! Exits to user space by reason (kernel side: pve-exporter-ebpf/src/userspace_exits.rs,
//! `count_userspace_exit`): reason labels from the tracepoint's print format.

#[allow(unused_imports)]
use super::*;

/// KVM_EXIT_* number -> label (`KVM_EXIT_IO` -> `io`), from kvm_userspace_exit's print fmt.
pub fn userspace_exit_names(print_fmt: &str) -> HashMap<u32, String> {
    tracefs::print_symbolic_tables(print_fmt, "reason")
        .into_iter()
        .flatten()
        .filter_map(|(n, name)| {
            let n = u32::try_from(n).ok()?;
            Some((n, name.strip_prefix("KVM_EXIT_").unwrap_or(&name).to_ascii_lowercase()))
        })
        .collect()
}

/// The `reason` label of a user-space exit.
pub fn userspace_exit_label(names: &HashMap<u32, String>, reason: u32) -> String {
    match reason {
        REASON_RESTART => "restart".to_string(),
        REASON_ERROR => "error".to_string(),
        r => names.get(&r).cloned().unwrap_or_else(|| r.to_string()),
    }
}
