//! Files that may hold the API token: what their mode says.

/// A warning when group or others can read or write a file that may hold secrets (the
/// environment file, the API token file): reading reveals the API token, and writing the
/// environment file sets the flags of a daemon that runs as root (`--qm-path`).
pub fn secret_file_warning(path: &std::path::Path, meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o7777;
    let who = match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (false, false) => return None,
        (true, false) => "readable",
        (false, true) => "writable",
        (true, true) => "readable and writable",
    };
    Some(format!(
        "{} is {who} by group or others (mode {mode:04o}); it may hold the API token: chmod 600 {}",
        path.display(),
        path.display()
    ))
}
