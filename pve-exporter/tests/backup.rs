//! Backups and replication of node pve1 from the fixture host `fixtures/hosts/pve-backup` (described, with
//! every expected value, in `fixtures/hosts/pve-backup.md`): PVE's task index, `active` and
//! task logs, the dump directories of its file storages and jobs.cfg, in the formats the PVE
//! sources write (docs/formats/backups-and-replication.md quotes them). The fixture's
//! node runs in UTC, as this machine: local times equal UTC.

mod fixture_scrape;

use std::time::{SystemTime, UNIX_EPOCH};

use fixture_scrape::{FIXTURES, Sample, copy_tree, samples, value};
use pve_exporter::exposition::Format;

fn scrape(root: &str) -> (String, Vec<Sample>) {
    let text = fixture_scrape::scrape(&["--root", root, "--collector.backup"], Format::Text);
    let s = samples(&text);
    (text, s)
}

fn guest<'a>(vmid: &'a str, ty: &'a str) -> [(&'a str, &'a str); 2] {
    [("id", vmid), ("type", ty)]
}

#[test]
fn backups_of_the_fixture_node() {
    let root = format!("{FIXTURES}/hosts/pve-backup");
    let (text, m) = scrape(&root);
    assert_eq!(value(&text, "pve_exporter_collector_success", &[("collector", "backup")]), Some(1.0), "{text}");

    // Last finished backup: (vmid, type, start, success, duration).
    let want = [
        ("100", "qemu", 1772418602.0, 1.0, 77.0),
        ("101", "qemu", 1772326802.0, 0.0, 7.0),
        ("102", "lxc", 1772326809.0, 1.0, 41.0),
        ("103", "qemu", 1772360101.0, 1.0, 52.0),
        ("104", "lxc", 1772362801.0, 0.0, 19.0),
        ("105", "lxc", 1772418679.0, 1.0, 28.0),
    ];
    for (id, ty, at, ok, d) in want {
        let l = guest(id, ty);
        assert_eq!(value(&text, "pve_guest_backup_last_run_timestamp_seconds", &l), Some(at), "{id}\n{text}");
        assert_eq!(value(&text, "pve_guest_backup_last_run_success", &l), Some(ok), "{id}");
        assert_eq!(value(&text, "pve_guest_backup_last_run_duration_seconds", &l), Some(d), "{id}");
    }
    // Guests of other nodes are not this node's.
    assert!(!text.contains("id=\"200\""), "{text}");

    // The error of a failed guest, from its part of the job's log (not the task's `job errors`).
    let errors: Vec<&Sample> = m.iter().filter(|s| s.name == "pve_guest_backup_last_error_info").collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].get("error"), "job failed with err -5 - Input/output error");
    assert!(errors[1].get("error").starts_with("command 'rsync --stats"), "{errors:?}");
    assert!(errors[1].get("error").len() <= 256);

    // Last success: 101's last run failed, its one before (job A) did not; 104 never succeeded.
    for (id, ty, at) in [
        ("100", "qemu", Some(1772418602.0)),
        ("101", "qemu", Some(1772312470.0)),
        ("102", "lxc", Some(1772326809.0)),
        ("103", "qemu", Some(1772360101.0)),
        ("104", "lxc", None),
        ("105", "lxc", Some(1772418679.0)),
    ] {
        assert_eq!(value(&text, "pve_guest_backup_last_success_timestamp_seconds", &guest(id, ty)), at, "{id}");
    }

    // A backup of 100 runs (active, no end time); nothing else.
    for (id, ty, running) in [("100", "qemu", 1.0), ("101", "qemu", 0.0), ("104", "lxc", 0.0)] {
        assert_eq!(value(&text, "pve_guest_backup_running", &guest(id, ty)), Some(running), "{id}");
    }

    // Coverage by enabled jobs: 103 only by a disabled one, 104 only by a job for node pve2.
    for (id, ty, covered) in [
        ("100", "qemu", 1.0),
        ("101", "qemu", 1.0),
        ("102", "lxc", 1.0),
        ("103", "qemu", 0.0),
        ("104", "lxc", 0.0),
        ("105", "lxc", 1.0),
    ] {
        assert_eq!(value(&text, "pve_guest_backup_covered", &guest(id, ty)), Some(covered), "{id}");
    }

    // Newest archive per guest and storage: (vmid, type, storage, time from the name, size, count).
    let files = [
        ("100", "qemu", "local", 1772312402.0, 4096.0, 2.0),
        ("100", "qemu", "nas-backup", 1772418602.0, 5120.0, 2.0),
        ("101", "qemu", "local", 1772312470.0, 0.0, 1.0),
        ("101", "qemu", "nas-backup", 1771722002.0, 3072.0, 1.0),
        ("102", "lxc", "local", 1772312620.0, 2048.0, 1.0),
        ("102", "lxc", "nas-backup", 1772326809.0, 1024.0, 1.0),
        ("103", "qemu", "local", 1772360101.0, 1536.0, 1.0),
        ("105", "lxc", "nas-backup", 1772418679.0, 0.0, 2.0),
    ];
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    for (id, ty, st, at, size, count) in files {
        let l = [("id", id), ("type", ty), ("storage", st)];
        assert_eq!(value(&text, "pve_guest_backup_file_newest_timestamp_seconds", &l), Some(at), "{id} {st}\n{text}");
        assert_eq!(value(&text, "pve_guest_backup_file_newest_size_bytes", &l), Some(size), "{id} {st}");
        assert_eq!(value(&text, "pve_guest_backup_files", &l), Some(count), "{id} {st}");
        let age = value(&text, "pve_guest_backup_file_newest_age_seconds", &l).expect("age");
        assert!((age - (now - at)).abs() < 600.0, "{id} {st}: {age}");
    }
    let n = m.iter().filter(|s| s.name == "pve_guest_backup_file_newest_timestamp_seconds").count();
    // Not: the disabled storage, the storage of node pve2, PBS, a running backup's temporary
    // files, non-standard names, archives of guests that do not exist or are not this node's.
    assert_eq!(n, files.len(), "{text}");
}

/// Broken inputs cost only their own series: a dump directory that cannot be read fails the
/// collector (and says which), the task list and jobs.cfg are still reported; a missing task
/// index and jobs.cfg are no failure (no task ran, no job).
#[test]
fn broken_parts_cost_only_their_series() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&std::path::Path::new(FIXTURES).join("hosts/pve-backup"), dir.path());
    let root = dir.path().to_str().expect("utf-8");
    // The NFS share's dump directory unreadable: a file where the directory should be.
    let nas = dir.path().join("mnt/pve/nas-backup/dump");
    std::fs::remove_dir_all(&nas).expect("rm");
    std::fs::write(&nas, "not a directory").expect("write");
    let (text, _) = scrape(root);
    assert_eq!(value(&text, "pve_exporter_collector_success", &[("collector", "backup")]), Some(0.0), "{text}");
    assert!(!text.contains("storage=\"nas-backup\""), "{text}");
    let l = [("id", "100"), ("type", "qemu"), ("storage", "local")];
    assert_eq!(value(&text, "pve_guest_backup_file_newest_timestamp_seconds", &l), Some(1772312402.0));
    assert_eq!(value(&text, "pve_guest_backup_last_run_success", &guest("100", "qemu")), Some(1.0));
    assert_eq!(value(&text, "pve_guest_backup_covered", &guest("103", "qemu")), Some(0.0));

    // No task list, no jobs.cfg: no backup ever ran, no job covers anything.
    std::fs::remove_file(&nas).expect("rm");
    for f in ["var/log/pve/tasks/index", "var/log/pve/tasks/index.1", "var/log/pve/tasks/active", "etc/pve/jobs.cfg"] {
        std::fs::remove_file(dir.path().join(f)).expect("rm");
    }
    let (text, _) = scrape(root);
    assert_eq!(value(&text, "pve_exporter_collector_success", &[("collector", "backup")]), Some(1.0), "{text}");
    assert!(!text.contains("pve_guest_backup_last_run_timestamp_seconds{"), "{text}");
    assert_eq!(value(&text, "pve_guest_backup_covered", &guest("100", "qemu")), Some(0.0));
    assert_eq!(value(&text, "pve_guest_backup_running", &guest("100", "qemu")), Some(0.0));
}

/// Replication jobs of pve1's guests from replication.cfg and PVE's state file, with the next
/// sync as PVE computes it (fixtures/hosts/pve-backup.md, Replication).
#[test]
fn replication_of_the_fixture_node() {
    let root = format!("{FIXTURES}/hosts/pve-backup");
    let (text, m) = scrape(&root);
    assert_eq!(value(&text, "pve_exporter_collector_success", &[("collector", "replication")]), Some(1.0), "{text}");
    // (guest, type, job, target, last sync, last try, fail count, duration, next sync, enabled)
    #[allow(clippy::type_complexity)]
    let want: &[(&str, &str, &str, &str, Option<f64>, Option<f64>, f64, Option<f64>, f64, f64)] = &[
        (
            "100",
            "qemu",
            "100-0",
            "pve2",
            Some(1772445600.0),
            Some(1772445600.0),
            0.0,
            Some(3.412671),
            1772446500.0,
            1.0,
        ),
        (
            "101",
            "qemu",
            "101-0",
            "pve2",
            Some(1772442000.0),
            Some(1772445600.0),
            2.0,
            Some(1.927333),
            1772446200.0,
            1.0,
        ),
        (
            "101",
            "qemu",
            "101-1",
            "pve3",
            Some(1772020800.0),
            Some(1772020800.0),
            0.0,
            Some(12.004511),
            1772021700.0,
            0.0,
        ),
        ("102", "lxc", "102-0", "pve2", Some(1772229600.0), Some(1772229600.0), 0.0, Some(5.801162), 1772488800.0, 1.0),
        // pve3 is offline: PVE does not plan the retry.
        ("102", "lxc", "102-1", "pve3", Some(1772396100.0), Some(1772445000.0), 5.0, Some(3.003391), 0.0, 1.0),
        // Never ran: the first `*/15` event after the epoch, as PVE shows it.
        ("105", "lxc", "105-0", "pve2", None, None, 0.0, None, 900.0, 1.0),
    ];
    for &(id, ty, job, target, sync, tried, fails, duration, next, enabled) in want {
        let l = [("id", id), ("type", ty), ("job", job), ("target", target)];
        let v = |name: &str| value(&text, name, &l);
        assert_eq!(v("pve_guest_replication_last_sync_timestamp_seconds"), sync, "{job}\n{text}");
        assert_eq!(v("pve_guest_replication_last_try_timestamp_seconds"), tried, "{job}");
        assert_eq!(v("pve_guest_replication_fail_count"), Some(fails), "{job}");
        assert_eq!(v("pve_guest_replication_duration_seconds"), duration, "{job}");
        assert_eq!(v("pve_guest_replication_next_sync_timestamp_seconds"), Some(next), "{job}");
        assert_eq!(v("pve_guest_replication_enabled"), Some(enabled), "{job}");
    }
    let jobs: Vec<&str> = m.iter().filter(|s| s.name == "pve_guest_replication_info").map(|s| s.get("job")).collect();
    assert_eq!(jobs, ["100-0", "101-0", "101-1", "102-0", "102-1", "105-0"], "200-0's guest is on pve2");
    let info = m.iter().find(|s| s.name == "pve_guest_replication_info" && s.get("job") == "101-0").expect("101-0");
    assert_eq!((info.get("schedule"), info.get("comment")), ("*/30", "DB replica: hot standby"));
    // The error text only while failing.
    let errors: Vec<&str> =
        m.iter().filter(|s| s.name == "pve_guest_replication_error_info").map(|s| s.get("job")).collect();
    assert_eq!(errors, ["101-0", "102-1"]);

    // A state file that does not parse (PVE fails then too): the collector fails, the jobs are
    // still described, nothing else is lost.
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(std::path::Path::new(&root), dir.path());
    let state = dir.path().join("var/lib/pve-manager/pve-replication-state.json");
    std::fs::copy(state.with_extension("json.broken"), &state).expect("broken state");
    let (text, _) = scrape(dir.path().to_str().expect("utf-8"));
    assert_eq!(value(&text, "pve_exporter_collector_success", &[("collector", "replication")]), Some(0.0));
    assert_eq!(value(&text, "pve_exporter_collector_success", &[("collector", "backup")]), Some(1.0));
    assert!(text.contains("pve_guest_replication_info{id=\"100\""), "{text}");
    assert!(!text.contains("pve_guest_replication_last_sync_timestamp_seconds{"), "{text}");
}
