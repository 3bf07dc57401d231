//! The programs the loader attaches: for each, its tracepoint, the record fields it reads
//! (checked against the kernel's format file: a changed tracepoint skips the program instead
//! of misreading it) and the globals the loader sets to their offsets. The kernel side of each
//! is its file in pve-exporter-ebpf/src/.

#[allow(unused_imports)]
use super::*;

/// A record field a program reads: its name, the sizes accepted, and the global the loader
/// sets to its offset (None for a raw-tracepoint program, which gets the value as a tracepoint
/// argument: the field is only checked, so that a changed tracepoint is not misread).
#[derive(Debug)]
pub struct FieldSpec {
    pub field: &'static str,
    pub sizes: &'static [u32],
    pub global: Option<&'static str>,
    /// When missing, the global is set to u32::MAX and the program copes (kvm_exit's isa).
    pub optional: bool,
}

/// A program of the object with the tracepoint it attaches to.
#[derive(Debug)]
pub struct ProgSpec {
    pub program: &'static str,
    pub category: &'static str,
    pub event: &'static str,
    pub fields: &'static [FieldSpec],
    /// Attached only when this other program is (kvm_entry pairs with kvm_exit).
    pub requires: Option<&'static str>,
    /// A raw tracepoint program (the tracepoint's arguments, no trace record), else a perf
    /// tracepoint program (the record).
    pub raw: bool,
}

const fn field(field: &'static str, sizes: &'static [u32], global: &'static str) -> FieldSpec {
    FieldSpec { field, sizes, global: Some(global), optional: false }
}

/// A field a raw-tracepoint program gets as an argument: checked, not passed.
const fn arg_field(field: &'static str, sizes: &'static [u32]) -> FieldSpec {
    FieldSpec { field, sizes, global: None, optional: false }
}

/// Every program besides the per-tracepoint counters.
pub const PROGRAMS: &[ProgSpec] = &[
    ProgSpec {
        program: programs::COUNT_USERSPACE_EXIT,
        category: "kvm",
        event: "kvm_userspace_exit",
        fields: &[arg_field("reason", &[4]), arg_field("errno", &[4])],
        requires: None,
        raw: true,
    },
    ProgSpec {
        program: programs::KVM_EXIT,
        category: "kvm",
        event: "kvm_exit",
        fields: &[
            field("exit_reason", &[4], globals::EXIT_REASON),
            FieldSpec { field: "isa", sizes: &[4], global: Some(globals::EXIT_ISA), optional: true },
        ],
        requires: None,
        raw: false,
    },
    ProgSpec {
        program: programs::KVM_ENTRY,
        category: "kvm",
        event: "kvm_entry",
        fields: &[],
        requires: Some(programs::KVM_EXIT),
        raw: false,
    },
    ProgSpec {
        program: programs::VCPU_WAKEUP,
        category: "kvm",
        event: "kvm_vcpu_wakeup",
        fields: &[
            field("ns", &[8], globals::WAKEUP_NS),
            field("waited", &[1], globals::WAKEUP_WAITED),
            field("valid", &[1], globals::WAKEUP_VALID),
        ],
        requires: None,
        raw: false,
    },
    ProgSpec {
        program: programs::SCHED_SWITCH,
        category: "sched",
        event: "sched_switch",
        fields: &[
            field("prev_pid", &[4], globals::SWITCH_PREV_PID),
            field("prev_state", &[8], globals::SWITCH_PREV_STATE),
            field("next_pid", &[4], globals::SWITCH_NEXT_PID),
        ],
        requires: None,
        raw: false,
    },
    ProgSpec {
        program: programs::SCHED_WAKEUP,
        category: "sched",
        event: "sched_wakeup",
        fields: &[field("pid", &[4], globals::SCHED_WAKEUP_PID)],
        requires: Some(programs::SCHED_SWITCH),
        raw: false,
    },
    ProgSpec {
        program: programs::SCHED_WAKEUP_NEW,
        category: "sched",
        event: "sched_wakeup_new",
        fields: &[field("pid", &[4], globals::SCHED_WAKEUP_NEW_PID)],
        requires: Some(programs::SCHED_SWITCH),
        raw: false,
    },
];

/// The globals of `spec` from the tracepoint's format: Err when a field is missing or has an
/// unexpected size (the program is then not loaded). Fields without a global are only checked.
pub fn resolve_offsets(spec: &ProgSpec, fmt: &TraceFormat) -> Result<Vec<(&'static str, u32)>, ParseError> {
    let mut out = Vec::new();
    for f in spec.fields {
        let offset = match fmt.field(f.field) {
            Some(d) if f.sizes.contains(&d.size) => d.offset,
            Some(d) => {
                return Err(ParseError::new(
                    format!("tracepoint {}", fmt.name),
                    format!("field {} has size {} (expected {:?})", f.field, d.size, f.sizes),
                ));
            }
            None if f.optional => u32::MAX,
            None => {
                return Err(ParseError::new(format!("tracepoint {}", fmt.name), format!("no field {}", f.field)));
            }
        };
        if let Some(g) = f.global {
            out.push((g, offset));
        }
    }
    Ok(out)
}

/// One of [`PROGRAMS`] after start-up.
#[derive(Debug, Clone)]
pub struct ProgramStatus {
    pub program: &'static str,
    pub attached: bool,
    pub error: Option<String>,
}
