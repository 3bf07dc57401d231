//! PVE storage replication: the jobs of `/etc/pve/replication.cfg`, their state in
//! `/var/lib/pve-manager/pve-replication-state.json`, and when each job runs next, all as PVE's
//! own code reads them (pve-guest-common `src/PVE/ReplicationConfig.pm` and
//! `src/PVE/ReplicationState.pm`, pve-common `src/PVE/SectionConfig.pm`), so the exporter shows
//! what `GET /nodes/<node>/replication` and `pvesr status` show.
//!
//! Use: [`parse_config`] and [`parse_state`] on the two files; for each job, [`local_job`] with
//! this node's name and the node `.vmlist` gives for the guest (None: PVE does not list the job on
//! this node); then [`ReplicationState::job`] and [`next_sync`] for its state and next run.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::sources::{
    error::ParseError,
    pve::calendar::{self, CalendarEvent, LocalTime},
};

/// The schedule of a job without one (ReplicationConfig.pm: `default => '*/15'`).
pub const DEFAULT_SCHEDULE: &str = "*/15";

/// PVE reads at most 1 MiB of the state file (`file_get_contents($state_path, 1024 * 1024)`).
pub const MAX_STATE_BYTES: usize = 1024 * 1024;

/// Job states kept from one state file; 1 MiB cannot hold many more real ones (~150 bytes each).
const MAX_STATES: usize = 20_000;

/// The last error of a job is kept up to this many bytes (PVE keeps the whole message; a series
/// label or log line does not need more).
pub const MAX_ERROR_BYTES: usize = 1024;

/// Storage ids kept per job.
const MAX_STOREIDS: usize = 64;

/// replication.cfg lines longer than this are not PVE's (comments are at most 4096 encoded).
const MAX_LINE: usize = 8192;

/// What a job does once it is marked for removal (`remove_job`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveJob {
    /// Remove the local replication snapshots.
    Local,
    /// Also the replicated volumes on the target.
    Full,
}

/// One replication job (a `local: <guest>-<jobnum>` section).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationJob {
    /// `<guest>-<jobnum>`, the numbers re-printed as PVE does (`0100-01` is `100-1`).
    pub id: String,
    pub guest: u32,
    pub jobnum: u32,
    /// The node replicated to.
    pub target: String,
    /// The schedule as written; None: the default [`DEFAULT_SCHEDULE`]. A schedule PVE's parser
    /// rejects is dropped (PVE warns and uses the default too).
    pub schedule: Option<String>,
    /// `disable`: the scheduler skips the job; the API and [`next_sync`] still list it.
    pub disabled: bool,
    /// Rate limit in MB/s.
    pub rate: Option<f64>,
    /// The comment, URI-decoded as PVE reads it (it stores `:` as `%3A`, ...).
    pub comment: Option<String>,
    /// The node the guest was on at the job's last run; absent before the first run.
    pub source: Option<String>,
    pub remove_job: Option<RemoveJob>,
    /// The effective schedule, parsed.
    event: CalendarEvent,
}

impl ReplicationJob {
    /// The schedule in effect (the default when none is set).
    pub fn schedule(&self) -> &str {
        self.schedule.as_deref().unwrap_or(DEFAULT_SCHEDULE)
    }
}

/// The jobs of replication.cfg, sorted by id as PVE iterates them (string order).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplicationConfig {
    pub jobs: Vec<ReplicationJob>,
    /// Sections PVE skips: bad header or id, unsupported type, no valid `target`, a second job
    /// for the same guest and target, an id repeated (the later section wins).
    pub skipped_sections: usize,
    /// Lines PVE ignores or whose value it rejects (the rest of the section is kept).
    pub skipped_lines: usize,
}

/// Parses replication.cfg. Never fails: what PVE would warn about and skip is skipped and
/// counted, so one bad job does not hide the others.
pub fn parse_config(text: &str) -> ReplicationConfig {
    let mut cfg = ReplicationConfig::default();
    let mut by_id: BTreeMap<String, ReplicationJob> = BTreeMap::new();
    // SectionConfig: `#` lines are skipped anywhere (they do not end a section).
    let mut lines = text.split('\n').filter(|l| !is_comment(l)).peekable();
    while let Some(line) = lines.next() {
        // `next if !$line`: empty lines (and Perl's false "0") between sections.
        if is_false(line) {
            continue;
        }
        let Some(header) = section_header(line) else {
            cfg.skipped_lines += 1;
            continue;
        };
        let mut section = Section::default();
        // The properties: every line up to the next empty one.
        while let Some(line) = lines.next_if(|l| !is_false(l)) {
            if !section.property(line) {
                cfg.skipped_lines += 1;
            }
        }
        let job = match header {
            Ok((kind, guest, jobnum)) if kind == "local" => section.into_job(guest, jobnum),
            _ => None,
        };
        match job {
            Some(job) => {
                if by_id.insert(job.id.clone(), job).is_some() {
                    cfg.skipped_sections += 1;
                }
            }
            None => cfg.skipped_sections += 1,
        }
    }
    // ReplicationConfig::parse_config: in sorted id order, a second job for the same guest and
    // target is deleted ("replication job for guest ... already exists").
    let mut seen = std::collections::BTreeSet::new();
    for job in by_id.into_values() {
        if seen.insert((job.guest, job.target.clone())) {
            cfg.jobs.push(job);
        } else {
            cfg.skipped_sections += 1;
        }
    }
    cfg
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Perl's false strings: the empty string and "0" end a section (`while ($line = ...)`).
fn is_false(line: &str) -> bool {
    line.is_empty() || line == "0"
}

/// `m/^(\S+):\s*(\d+)-(\d+)\s*$/` (ReplicationConfig.pm `parse_section_header`): None when the line
/// is not a header; Err when it is one PVE skips (guest id below 100, numbers out of range).
fn section_header(line: &str) -> Option<Result<(String, u32, u32), ()>> {
    let line = line.trim_end();
    let (kind, id) = line.rsplit_once(':')?;
    if kind.is_empty() || kind.chars().any(char::is_whitespace) || line.len() > MAX_LINE {
        return None;
    }
    let (guest, jobnum) = id.trim_start().split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(guest) || !digits(jobnum) {
        return None;
    }
    // parse_replication_job_id: guest IDs below 100 are reserved; the id pattern allows at most
    // 9 digits for either number, which u32 holds.
    let parsed = match (parse_int(guest), parse_int(jobnum)) {
        (Some(g), Some(n)) if g >= 100 => Ok((kind.to_lowercase(), g, n)),
        _ => Err(()),
    };
    Some(parsed)
}

/// A decimal with any number of leading zeros (Perl's `int`), up to u32.
fn parse_int(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let s = s.trim_start_matches('0');
    if s.is_empty() {
        Some(0)
    } else if s.len() > 10 {
        None
    } else {
        s.parse().ok()
    }
}

#[derive(Default)]
struct Section {
    target: Option<String>,
    schedule: Option<(String, CalendarEvent)>,
    disabled: Option<bool>,
    rate: Option<f64>,
    comment: Option<String>,
    source: Option<String>,
    remove_job: Option<RemoveJob>,
}

impl Section {
    /// One property line; false when PVE ignores it or rejects its value.
    fn property(&mut self, line: &str) -> bool {
        // `m/^\s+(\S+)(\s+(.*\S))?\s*$/`
        if line.len() > MAX_LINE || !line.starts_with(char::is_whitespace) {
            return false;
        }
        let rest = line.trim();
        if rest.is_empty() {
            return false;
        }
        let (key, value) = match rest.split_once(char::is_whitespace) {
            Some((k, v)) => (k, Some(v.trim_start())),
            None => (rest, None),
        };
        // SectionConfig: a repeated key is a "duplicate attribute" (the first value stays); a
        // value check failure drops the key; a key the schema lacks is "unexpected property".
        macro_rules! set {
            ($field:expr, $value:expr) => {{
                if $field.is_some() {
                    return false;
                }
                match $value {
                    Some(v) => {
                        $field = Some(v);
                        true
                    }
                    None => false,
                }
            }};
        }
        match key {
            "target" => set!(self.target, value.filter(|v| valid_node(v)).map(str::to_string)),
            "source" => set!(self.source, value.filter(|v| valid_node(v)).map(str::to_string)),
            // pve-calendar-event with maxLength 128.
            "schedule" => set!(
                self.schedule,
                value.filter(|v| v.len() <= 128).and_then(|v| Some((v.to_string(), calendar::parse(v).ok()?)))
            ),
            // A boolean: a bare key is 1; the schema accepts only 1 and 0.
            "disable" => set!(
                self.disabled,
                match value {
                    None | Some("1") => Some(true),
                    Some("0") => Some(false),
                    _ => None,
                }
            ),
            // A number (JSONSchema `is_number`) of at least 1.
            "rate" => set!(
                self.rate,
                value.filter(|v| is_number(v)).and_then(|v| v.parse::<f64>().ok()).filter(|r| *r >= 1.0)
            ),
            "comment" => set!(self.comment, value.filter(|v| v.len() <= 4096).map(decode_text)),
            "remove_job" => set!(
                self.remove_job,
                match value {
                    Some("local") => Some(RemoveJob::Local),
                    Some("full") => Some(RemoveJob::Full),
                    _ => None,
                }
            ),
            // check_value accepts `type` when it names the section's own type.
            "type" => value == Some("local"),
            _ => false,
        }
    }

    /// The job, or None when PVE's check_config rejects the section (`target` is required).
    fn into_job(self, guest: u32, jobnum: u32) -> Option<ReplicationJob> {
        let target = self.target?;
        let (schedule, event) = match self.schedule {
            Some((text, event)) => (Some(text), event),
            // The default always parses; the fallback only avoids a panic path.
            None => (None, calendar::parse(DEFAULT_SCHEDULE).unwrap_or_default()),
        };
        Some(ReplicationJob {
            id: format!("{guest}-{jobnum}"),
            guest,
            jobnum,
            target,
            schedule,
            disabled: self.disabled.unwrap_or(false),
            rate: self.rate,
            comment: self.comment,
            source: self.source,
            remove_job: self.remove_job,
            event,
        })
    }
}

/// pve-node: `^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$`.
fn valid_node(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// JSONSchema `is_number`: `^[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?$`.
fn is_number(v: &str) -> bool {
    let v = v.strip_prefix(['+', '-']).unwrap_or(v);
    let (mantissa, exp) = match v.find(['e', 'E']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => (!a.is_empty() || !b.is_empty()) && digits(a) && digits(b),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exp_ok
}

/// PVE::ParseUtils::decode_text: `uri_unescape` (every `%XX`; a `%` without two hex digits stays)
/// then UTF-8 (invalid bytes become U+FFFD, as Encode::decode does).
fn decode_text(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            // Two hex digits are below 256.
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One job's entry in the state file. Fields PVE defaults (`extract_job_state`) are 0 when absent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobState {
    /// Start of the last successful sync (unix s); 0: never.
    pub last_sync: i64,
    /// Start of the last attempt; 0: never.
    pub last_try: i64,
    /// Start of the scheduler iteration that last ran the job.
    pub last_iteration: i64,
    /// Consecutive failures (0 after a success).
    pub fail_count: i64,
    /// The last attempt's error, cut to [`MAX_ERROR_BYTES`]; None after a success.
    pub error: Option<String>,
    /// Seconds the last attempt took.
    pub duration: Option<f64>,
    /// The node that last ran the job.
    pub last_node: Option<String>,
    /// The storages of the replicated volumes.
    pub storeid_list: Vec<String>,
    /// The worker running the job now (present only while it runs).
    pub pid: Option<i64>,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub ptime: Option<u64>,
}

/// The state file: guest -> target node -> state (PVE keys it by `local/<target>`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplicationState {
    pub guests: BTreeMap<u32, BTreeMap<String, JobState>>,
}

impl ReplicationState {
    /// A job's state (`extract_job_state`: by guest and target, not by job id); None: the job
    /// never ran (PVE then uses all-zero defaults, see [`next_sync`]).
    pub fn job(&self, job: &ReplicationJob) -> Option<&JobState> {
        self.guests.get(&job.guest)?.get(&job.target)
    }
}

const STATE_INPUT: &str = "pve-replication-state.json";

/// Parses the state file. An empty file is an empty state; anything PVE's `read_state` refuses
/// (not one line `{...}`, invalid JSON) is an error, as the whole file is then unusable for PVE
/// too. Within valid JSON, entries of the wrong shape are skipped and fields are read leniently
/// (numbers or numeric strings; unknown keys ignored).
pub fn parse_state(text: &str) -> Result<ReplicationState, ParseError> {
    if text.len() > MAX_STATE_BYTES {
        return Err(ParseError::new(STATE_INPUT, format!("larger than {MAX_STATE_BYTES} bytes")));
    }
    if text.is_empty() {
        return Ok(ReplicationState::default());
    }
    // read_state: `m/^(\{.*\})$/`: one line (Perl's `$` also allows one trailing newline).
    let body = text.strip_suffix('\n').unwrap_or(text);
    if !(body.starts_with('{') && body.ends_with('}')) || body.contains('\n') {
        return Err(ParseError::new(STATE_INPUT, "invalid json data"));
    }
    let root: serde_json::Map<String, Value> =
        serde_json::from_str(body).map_err(|e| ParseError::new(STATE_INPUT, format!("invalid json data: {e}")))?;
    let mut state = ReplicationState::default();
    let mut count = 0;
    for (vmid, targets) in &root {
        // PVE looks states up by the guest id as it prints it: `0100` is no guest's key.
        let (Some(vmid), Some(targets)) = (parse_int(vmid).filter(|n| n.to_string() == *vmid), targets.as_object())
        else {
            continue;
        };
        for (tid, entry) in targets {
            // get_unique_target_id of the only plugin, `local`.
            let (Some(target), Some(entry)) = (tid.strip_prefix("local/"), entry.as_object()) else {
                continue;
            };
            if count >= MAX_STATES {
                return Ok(state);
            }
            count += 1;
            state.guests.entry(vmid).or_default().insert(target.to_string(), job_state(entry));
        }
    }
    Ok(state)
}

fn job_state(e: &serde_json::Map<String, Value>) -> JobState {
    let int = |k: &str| number(e.get(k)).map(|n| n as i64);
    JobState {
        last_sync: int("last_sync").unwrap_or(0),
        last_try: int("last_try").unwrap_or(0),
        last_iteration: int("last_iteration").unwrap_or(0),
        fail_count: int("fail_count").unwrap_or(0),
        error: e.get("error").and_then(Value::as_str).map(|s| truncate(s, MAX_ERROR_BYTES)),
        duration: number(e.get("duration")),
        last_node: e.get("last_node").and_then(Value::as_str).map(|s| truncate(s, 256)),
        storeid_list: e
            .get("storeid_list")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(Value::as_str).take(MAX_STOREIDS).map(|s| truncate(s, 256)).collect())
            .unwrap_or_default(),
        pid: int("pid"),
        ptime: number(e.get("ptime")).filter(|p| *p >= 0.0).map(|p| p as u64),
    }
}

/// A JSON number, or a string holding one (Perl writes a scalar last used as a string quoted).
/// Non-finite values are refused; `as` casts of the finite rest saturate.
fn number(v: Option<&Value>) -> Option<f64> {
    let n = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// At most `max` bytes, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    crate::sources::clip(s, max).to_string()
}

/// The job as PVE's `job_status` lists it on `local_node`, or None when it does not list it there.
/// `guest_node` is the node `.vmlist` gives for the job's guest (None: no such guest).
///
/// ReplicationState.pm `job_status`:
/// - `next if !$vms->{ids}->{$vmid};` (line 257) and
///   `next if $vms->{ids}->{$vmid}->{node} ne $local_node;` (260): only guests of this node;
/// - `$jobcfg->{source} = $local_node if !defined($jobcfg->{source})` (263-266): a job that never
///   ran has no `source` yet and is reported;
/// - `switch_replication_job_target_nolock($vmid, $local_node, $jobcfg->{source}) if $local_node
///   ne $jobcfg->{source}` (269-270): a guest moved here ("stolen") replicates back to its old node
///   where it replicated to this one, and its source becomes this node;
/// - `next if !$jobcfg->{remove_job} && $target eq $local_node;` (274): never to itself;
/// - disabled jobs are listed (the API passes `get_disabled`, line 276).
pub fn local_job(job: &ReplicationJob, local_node: &str, guest_node: Option<&str>) -> Option<ReplicationJob> {
    if guest_node? != local_node {
        return None;
    }
    let mut job = job.clone();
    match job.source.as_deref() {
        Some(old) if old != local_node => {
            if job.target == local_node {
                job.target = old.to_string();
            }
            job.source = Some(local_node.to_string());
        }
        Some(_) => {}
        None => job.source = Some(local_node.to_string()),
    }
    if job.remove_job.is_none() && job.target == local_node {
        return None;
    }
    Some(job)
}

/// When PVE runs the job next (unix s), as `job_status` computes `next_sync`
/// (pve-guest-common src/PVE/ReplicationState.pm, lines 283-305):
///
/// ```perl
/// my $next_sync = 0;
/// if ($jobcfg->{remove_job}) {
///     $next_sync = 1; # lowest possible value
/// } else {
///     if (my $fail_count = $state->{fail_count}) {
///         my $members = PVE::Cluster::get_members();
///         if (!$fail_count || ($members->{$target} && $members->{$target}->{online})) {
///             $next_sync = $state->{last_try} + 60 * ($fail_count <= 3 ? 5 * $fail_count : 30);
///         }
///     } else {
///         my $schedule = $jobcfg->{schedule} || '*/15';
///         my $calspec = PVE::CalendarEvent::parse_calendar_event($schedule);
///         $next_sync = PVE::CalendarEvent::compute_next_event($calspec, $state->{last_try}) // 0;
///     }
/// }
/// ```
///
/// So: a job being removed: 1. After failures: `last_try` plus 5, 10, 15 minutes for 1, 2, 3
/// failures, then 30 minutes, but 0 while the target is not online in the cluster membership
/// (`target_online` `Some(false)`, also when it is no member); None when `target_online` is None
/// (membership unknown: PVE's answer cannot be told). Otherwise the first schedule event after
/// `last_try` (not after `last_sync`; a job that never ran, `state` None, gets the first event
/// after the epoch: 900 for `*/15`), 0 when there is none. Disabled jobs are computed the same
/// way (the API lists them with this value; the scheduler skips them). `tz` is the node's zone
/// for schedules without `UTC`.
pub fn next_sync(
    job: &ReplicationJob,
    state: Option<&JobState>,
    target_online: Option<bool>,
    tz: &dyn LocalTime,
) -> Option<i64> {
    if job.remove_job.is_some() {
        return Some(1);
    }
    let default = JobState::default();
    let state = state.unwrap_or(&default);
    let fail_count = state.fail_count;
    if fail_count != 0 {
        return match target_online? {
            true => {
                let minutes = if fail_count <= 3 { fail_count.saturating_mul(5) } else { 30 };
                Some(state.last_try.saturating_add(minutes.saturating_mul(60)))
            }
            false => Some(0),
        };
    }
    Some(job.event.next_after(state.last_try, tz).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::pve::calendar::Utc;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/hosts/pve-backup");
    const CFG: &str =
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/hosts/pve-backup/etc/pve/replication.cfg"));
    const STATE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/hosts/pve-backup/var/lib/pve-manager/pve-replication-state.json"
    ));
    const BROKEN: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/hosts/pve-backup/var/lib/pve-manager/pve-replication-state.json.broken"
    ));

    /// The fixture's `.vmlist`: guest -> node.
    fn guest_node(vmid: u32) -> Option<&'static str> {
        let vmlist = std::fs::read_to_string(format!("{FIXTURE}/etc/pve/.vmlist")).unwrap();
        let v: Value = serde_json::from_str(&vmlist).unwrap();
        let node = v["ids"][vmid.to_string()]["node"].as_str()?;
        Some(if node == "pve1" { "pve1" } else { "pve2" })
    }

    /// The fixture's `.members`: whether a node is online.
    fn online(node: &str) -> Option<bool> {
        let members = std::fs::read_to_string(format!("{FIXTURE}/etc/pve/.members")).unwrap();
        let v: Value = serde_json::from_str(&members).unwrap();
        Some(v["nodelist"][node]["online"].as_i64() == Some(1))
    }

    fn job<'a>(cfg: &'a ReplicationConfig, id: &str) -> &'a ReplicationJob {
        cfg.jobs.iter().find(|j| j.id == id).unwrap()
    }

    #[test]
    fn fixture_config() {
        let cfg = parse_config(CFG);
        assert_eq!((cfg.skipped_sections, cfg.skipped_lines), (0, 0));
        let ids: Vec<_> = cfg.jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["100-0", "101-0", "101-1", "102-0", "102-1", "105-0", "200-0"]);
        let j = job(&cfg, "100-0");
        assert_eq!((j.guest, j.jobnum, j.target.as_str(), j.rate), (100, 0, "pve2", Some(100.0)));
        assert_eq!((j.schedule(), j.source.as_deref(), j.disabled), ("*/15", Some("pve1"), false));
        let j = job(&cfg, "101-0");
        assert_eq!(j.comment.as_deref(), Some("DB replica: hot standby"));
        assert_eq!(j.schedule.as_deref(), Some("*/30"));
        let j = job(&cfg, "101-1");
        assert!(j.disabled);
        assert_eq!((j.schedule.as_deref(), j.schedule(), j.target.as_str()), (None, "*/15", "pve3"));
        assert_eq!(job(&cfg, "102-0").schedule(), "mon..fri 22:00");
        assert_eq!(job(&cfg, "102-0").rate, Some(50.0));
        assert_eq!(job(&cfg, "105-0").source, None);
        assert_eq!(job(&cfg, "200-0").source.as_deref(), Some("pve2"));
        assert!(cfg.jobs.iter().all(|j| j.remove_job.is_none()));
    }

    #[test]
    fn fixture_state() {
        let st = parse_state(STATE).unwrap();
        assert_eq!(st.guests.keys().copied().collect::<Vec<_>>(), [100, 101, 102, 110]);
        let s = &st.guests[&101]["pve2"];
        assert_eq!((s.last_sync, s.last_try, s.fail_count), (1772442000, 1772445600, 2));
        assert_eq!(s.duration, Some(1.927333));
        assert!(s.error.as_deref().unwrap().starts_with("command 'set -o pipefail && pvesm export"));
        assert!(s.error.as_deref().unwrap().ends_with("failed: exit code 255"));
        assert_eq!(s.storeid_list, ["local-zfs"]);
        assert_eq!((s.last_node.as_deref(), s.pid, s.ptime), (Some("pve1"), None, None));
        assert_eq!(
            st.guests[&102]["pve3"].error.as_deref(),
            Some("ssh: connect to host 192.168.10.13 port 22: No route to host")
        );
        let e = parse_state(BROKEN).unwrap_err();
        assert!(e.msg.contains("invalid json data"), "{e}");
    }

    /// The "Replication" table of fixtures/hosts/pve-backup.md, at now = 1772445900 in UTC.
    #[test]
    fn fixture_table() {
        let cfg = parse_config(CFG);
        let st = parse_state(STATE).unwrap();
        #[allow(clippy::type_complexity)]
        let expected: &[(&str, &str, &str, i64, i64, i64, Option<f64>, bool, i64)] = &[
            ("100-0", "pve2", "*/15", 1772445600, 1772445600, 0, Some(3.412671), false, 1772446500),
            ("101-0", "pve2", "*/30", 1772442000, 1772445600, 2, Some(1.927333), true, 1772446200),
            ("101-1", "pve3", "*/15", 1772020800, 1772020800, 0, Some(12.004511), false, 1772021700),
            ("102-0", "pve2", "mon..fri 22:00", 1772229600, 1772229600, 0, Some(5.801162), false, 1772488800),
            ("102-1", "pve3", "*/15", 1772396100, 1772445000, 5, Some(3.003391), true, 0),
            ("105-0", "pve2", "*/15", 0, 0, 0, None, false, 900),
        ];
        let mut reported = Vec::new();
        for j in &cfg.jobs {
            let Some(j) = local_job(j, "pve1", guest_node(j.guest)) else { continue };
            reported.push(j.id.clone());
            let (_, target, schedule, last_sync, last_try, fail_count, duration, error, next) =
                *expected.iter().find(|e| e.0 == j.id).unwrap_or_else(|| panic!("{} reported", j.id));
            let s = st.job(&j);
            let d = JobState::default();
            let sv = s.unwrap_or(&d);
            assert_eq!(j.target, target);
            assert_eq!(j.schedule(), schedule);
            assert_eq!(j.source.as_deref(), Some("pve1"), "{}: source is set as PVE sets it", j.id);
            assert_eq!((sv.last_sync, sv.last_try, sv.fail_count), (last_sync, last_try, fail_count), "{}", j.id);
            assert_eq!(sv.duration, duration, "{}", j.id);
            assert_eq!(sv.error.is_some(), error, "{}", j.id);
            assert_eq!(next_sync(&j, s, online(&j.target), &Utc), Some(next), "{}", j.id);
        }
        // 200-0's guest is on pve2.
        assert_eq!(reported, ["100-0", "101-0", "101-1", "102-0", "102-1", "105-0"]);
        // 102-1 if membership were ignored (pve3 online): last_try + 30 min.
        let j = job(&cfg, "102-1");
        assert_eq!(next_sync(j, st.job(j), Some(true), &Utc), Some(1772446800));
        assert_eq!(next_sync(j, st.job(j), None, &Utc), None);
        // The state of guest 110 belongs to no job.
        assert!(cfg.jobs.iter().all(|j| j.guest != 110));
    }

    #[test]
    fn next_sync_rules() {
        let cfg = parse_config("local: 300-0\n\ttarget b\n\tschedule */15\n");
        let j = &cfg.jobs[0];
        let st = |fail_count, last_try| JobState { fail_count, last_try, ..Default::default() };
        // pve-manager test/replication_test5.log: a new job at 1000 is due at 900; after a run
        // at 1000 next is 1800; after a failure at 2740 it is 3040.
        assert_eq!(next_sync(j, None, Some(true), &Utc), Some(900));
        assert_eq!(next_sync(j, Some(&st(0, 1000)), Some(true), &Utc), Some(1800));
        assert_eq!(next_sync(j, Some(&st(1, 2740)), Some(true), &Utc), Some(3040));
        for (fails, minutes) in [(1, 5), (2, 10), (3, 15), (4, 30), (100, 30)] {
            assert_eq!(next_sync(j, Some(&st(fails, 6000)), Some(true), &Utc), Some(6000 + minutes * 60));
            assert_eq!(next_sync(j, Some(&st(fails, 6000)), Some(false), &Utc), Some(0));
        }
        // Without failures the membership does not matter.
        assert_eq!(next_sync(j, Some(&st(0, 1000)), None, &Utc), Some(1800));
        assert_eq!(next_sync(j, Some(&st(0, 1000)), Some(false), &Utc), Some(1800));
        // A job being removed: 1, whatever its state.
        let cfg = parse_config("local: 300-0\n\ttarget b\n\tremove_job full\n");
        assert_eq!(cfg.jobs[0].remove_job, Some(RemoveJob::Full));
        assert_eq!(next_sync(&cfg.jobs[0], Some(&st(4, 6000)), Some(false), &Utc), Some(1));
        // A schedule without a next event: 0.
        let cfg = parse_config("local: 300-0\n\ttarget b\n\tschedule 2021-01-01\n");
        assert_eq!(next_sync(&cfg.jobs[0], Some(&st(0, 1772445900)), Some(true), &Utc), Some(0));
        // Extreme state values do not overflow.
        assert_eq!(next_sync(j, Some(&st(3, i64::MAX)), Some(true), &Utc), Some(i64::MAX));
        assert_eq!(next_sync(j, Some(&st(-5, 100)), Some(true), &Utc), Some(100 - 1500));
        assert_eq!(next_sync(j, Some(&st(0, i64::MAX)), Some(true), &Utc), Some(0));
    }

    #[test]
    fn local_job_rules() {
        let cfg = parse_config(
            "local: 300-0\n\ttarget b\n\nlocal: 301-0\n\ttarget a\n\tsource c\n\nlocal: 302-0\n\ttarget a\n\tremove_job local\n\tsource a\n\nlocal: 303-0\n\ttarget a\n\tsource a\n",
        );
        let get = |id: &str| job(&cfg, id);
        // No source yet: reported, source becomes this node.
        let j = local_job(get("300-0"), "a", Some("a")).unwrap();
        assert_eq!((j.target.as_str(), j.source.as_deref()), ("b", Some("a")));
        assert_eq!(local_job(get("300-0"), "a", Some("b")), None);
        assert_eq!(local_job(get("300-0"), "a", None), None);
        // Stolen guest (was on c, replicated to a, now on a): replicates back to c.
        let j = local_job(get("301-0"), "a", Some("a")).unwrap();
        assert_eq!((j.target.as_str(), j.source.as_deref()), ("c", Some("a")));
        // To itself: only a job being removed.
        assert!(local_job(get("302-0"), "a", Some("a")).is_some());
        assert_eq!(local_job(get("303-0"), "a", Some("a")), None);
    }

    #[test]
    fn malformed_config() {
        let text = "\
# a comment
garbage line
local: 100-0
\ttarget pve2
\tschedule not a schedule
\trate 0.5
\tdisable maybe
\tunknown 1
\ttarget pve3
# comment inside
\tcomment 100%25 %ZZ ok%C3%A9
no indent
\tremove_job partial

local: 099-0
\ttarget pve2

qemu: 101-0
\ttarget pve2

local: 102-x
\ttarget pve2

local: 103-0
\tschedule */5

local: 0104-01
\ttarget pve2
\trate 1e1
\tdisable 0

local: 104-1
\ttarget pve2

local: 105-0
\ttarget bad_node!

local: 106-0
\ttarget pve2
\tschedule */10
local: 107-0
\ttarget pve2
";
        let cfg = parse_config(text);
        let ids: Vec<_> = cfg.jobs.iter().map(|j| j.id.as_str()).collect();
        // 104-1 duplicates 104-1 (written 0104-01): the later section replaces it.
        assert_eq!(ids, ["100-0", "104-1", "106-0"]);
        let j = job(&cfg, "100-0");
        assert_eq!((j.target.as_str(), j.schedule(), j.rate, j.disabled), ("pve2", "*/15", None, false));
        assert_eq!(j.comment.as_deref(), Some("100% %ZZ ok\u{e9}"));
        assert_eq!(j.remove_job, None);
        // 099-0 (reserved), qemu type, 103-0 (no target), 105-0 (bad target), 104-1 replaced.
        assert_eq!(cfg.skipped_sections, 5);
        // garbage line, schedule, rate, disable, unknown, 2nd target, "no indent", remove_job,
        // `local: 102-x` (not a header) and its line, `local: 107-0` inside 106-0's section and
        // its `target` (a duplicate there), and 105-0's invalid target.
        assert_eq!(cfg.skipped_lines, 13);
        // A second job for the same guest and target (in id order) is dropped.
        let cfg = parse_config("local: 100-1\n\ttarget a\n\nlocal: 100-0\n\ttarget a\n\nlocal: 100-2\n\ttarget b\n");
        assert_eq!(cfg.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["100-0", "100-2"]);
        assert_eq!(cfg.skipped_sections, 1);
        // Nothing panics on arbitrary bytes.
        for t in [
            "",
            "\n\n",
            ":",
            "a: 1-",
            "local: 100-0",
            "local: 4294967296-0\n\ttarget a",
            "\u{0}\u{ffff}:\t9-9\n\t\u{e9} \u{e9}",
        ] {
            let _ = parse_config(t);
        }
        let long = format!("local: 100-0\n\ttarget a\n\tcomment {}\n", "x".repeat(5000));
        let cfg = parse_config(&long);
        assert_eq!((cfg.jobs[0].comment.as_deref(), cfg.skipped_lines), (None, 1));
    }

    #[test]
    fn malformed_state() {
        assert_eq!(parse_state("").unwrap(), ReplicationState::default());
        assert_eq!(parse_state("{}\n").unwrap(), ReplicationState::default());
        // PVE refuses pretty-printed JSON and anything not an object.
        for bad in ["{\n}", "[]", "{", "null", " {}", "{}\n\n", "{\"100\":}"] {
            assert!(parse_state(bad).is_err(), "{bad:?}");
        }
        assert!(parse_state(&format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_STATE_BYTES))).is_err());
        // Wrong shapes are skipped; numbers may be strings or floats; unknown keys ignored.
        let st = parse_state(
            r#"{"abc":{"local/a":{}},"100":[],"101":{"remote/a":{},"local/b":7,"local/c":{"last_try":"1772445600","fail_count":1.0,"duration":"2.5","error":5,"pid":123,"ptime":"456","new":true,"storeid_list":["a",1,"b"]},"local/d":{"last_sync":null,"last_try":1e300,"duration":"nan"}}}"#,
        )
        .unwrap();
        assert_eq!(st.guests.len(), 1);
        let c = &st.guests[&101]["c"];
        assert_eq!((c.last_try, c.fail_count, c.duration, c.error.as_deref()), (1772445600, 1, Some(2.5), None));
        assert_eq!((c.pid, c.ptime, c.storeid_list.clone()), (Some(123), Some(456), vec!["a".to_string(), "b".into()]));
        let d = &st.guests[&101]["d"];
        assert_eq!((d.last_sync, d.last_try, d.duration), (0, i64::MAX, None));
        // Long errors are cut at a character boundary.
        let st = parse_state(&format!(r#"{{"100":{{"local/a":{{"error":"{}"}}}}}}"#, "\u{e9}".repeat(MAX_ERROR_BYTES)))
            .unwrap();
        let e = st.guests[&100]["a"].error.as_deref().unwrap();
        assert!(e.len() <= MAX_ERROR_BYTES && e.chars().all(|c| c == '\u{e9}'));
    }
}
