//! The counted tracepoints of `--ebpf-events` (kernel side: pve-exporter-ebpf/src/events.rs,
//! the `count_event_<slot>` programs): which program counts each event, and the per-VM totals
//! read from EVENT_ARRAY / EVENT_COUNTS, with the events other programs count anyway.

#[allow(unused_imports)]
use super::*;

/// One tracepoint of `--ebpf-events`, counted per VM.
#[derive(Debug, Clone)]
pub struct TraceEvent {
    /// `category:name` as given.
    pub spec: String,
    pub name: String,
    /// What counts it, once attached.
    pub source: Option<EventSource>,
    pub attached: bool,
    /// Why it is not attached.
    pub error: Option<String>,
}

/// What counts an event of `--ebpf-events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    /// Its own counter program, `count_event_<slot>`.
    Slot(u32),
    /// The program already on the tracepoint: its counts summed over reasons or outcomes (and
    /// `kvm_entry`'s count in [`SLOT_KVM_ENTRY`]), so that no second program runs on every hit.
    UserspaceExits,
    Exits,
    Entries,
    HaltWakeups,
}

/// The events a program of [`PROGRAMS`] counts anyway: (event, program, how). While that program
/// is attached, the event gets no counter program.
pub const DERIVED_EVENTS: &[(&str, &str, EventSource)] = &[
    ("kvm:kvm_userspace_exit", programs::COUNT_USERSPACE_EXIT, EventSource::UserspaceExits),
    ("kvm:kvm_exit", programs::KVM_EXIT, EventSource::Exits),
    ("kvm:kvm_entry", programs::KVM_ENTRY, EventSource::Entries),
    ("kvm:kvm_vcpu_wakeup", programs::VCPU_WAKEUP, EventSource::HaltWakeups),
];

/// The source of `event` (`category:name`) when an attached program counts it already.
pub fn derived_source(event: &str, programs: &[ProgramStatus]) -> Option<EventSource> {
    let &(_, program, source) = DERIVED_EVENTS.iter().find(|(e, _, _)| *e == event)?;
    programs.iter().any(|p| p.program == program && p.attached).then_some(source)
}

impl EbpfSnapshot {
    /// Events per (process, event name) of the attached `events`, each from its source; only
    /// non-zero counts. Exact wherever counted: the derived sums add the array and hash counts
    /// like the counters' do.
    pub fn event_totals(&self, events: &[TraceEvent]) -> HashMap<(u32, String), u64> {
        let mut out: HashMap<(u32, String), u64> = HashMap::new();
        let mut add = |tgid: u32, name: &str, n: u64| {
            if n > 0 {
                *out.entry((tgid, name.to_string())).or_default() += n;
            }
        };
        for e in events.iter().filter(|e| e.attached) {
            let slot = match e.source {
                Some(EventSource::Slot(s)) => s,
                Some(EventSource::Entries) => SLOT_KVM_ENTRY,
                Some(EventSource::UserspaceExits) => {
                    self.userspace_exits.iter().for_each(|(&(tgid, _), &n)| add(tgid, &e.name, n));
                    continue;
                }
                Some(EventSource::Exits) => {
                    self.exits.iter().for_each(|(&(tgid, _, _), v)| add(tgid, &e.name, v.count));
                    continue;
                }
                Some(EventSource::HaltWakeups) => {
                    self.halt.iter().for_each(|(&(tgid, _), v)| add(tgid, &e.name, v.count));
                    continue;
                }
                None => continue,
            };
            self.events.iter().filter(|(k, _)| k.1 == slot).for_each(|(&(tgid, _), &n)| add(tgid, &e.name, n));
        }
        out
    }
}
