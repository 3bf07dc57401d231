//! The PVE API (`https://<node>:8006/api2/json/...`): a small blocking HTTPS client for the
//! collection thread, and pure parsers of the responses the PVE collectors use.
//!
//! The client authenticates with an API token (`user@realm!tokenid=secret`, header
//! `Authorization: PVEAPIToken=...`), verifies TLS against PVE's cluster CA
//! (`/etc/pve/pve-root-ca.pem` below `--root`, read through the pmxcfs gate) when there is
//! one, else against Mozilla's roots, or against a CA file given by flag; insecure only when
//! asked. Every request has one time budget (`--pve-api-timeout`) that covers waiting for a
//! slot, every attempt and the backoff between them: transport errors and 5xx answers are
//! retried while the budget lasts, at most [`RETRIES`] times. Bodies are capped at
//! [`MAX_BODY`] bytes, and at most `--pve-api-max-concurrent` requests run at once.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use ureq::{
    Agent,
    tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider},
};

use crate::{
    host::{BlockingGate, HostRoot, call_with_timeout},
    sources::{
        error::ParseError,
        proc::node::{BootInfo, NodeStatus, Rootfs, Swap},
        proc::pressure::VmPressure,
        pve::config::ParsedFile,
        pve::ha::{self, HaResource, LrmStatus, ManagerStatus, json_bool, json_f64, json_string, json_u64},
    },
};

/// The environment variable that may hold the API token (instead of `--pve-api-token-file`).
pub const TOKEN_ENV: &str = "PVE_EXPORTER_API_TOKEN";
/// Retries of a request after a transport error or a 5xx answer (within its time budget).
pub const RETRIES: u32 = 2;
/// First backoff; doubled for each further retry.
pub const BACKOFF: Duration = Duration::from_millis(100);
/// Largest response body read (the biggest answer we ask for, a disk list, is some KiB).
pub const MAX_BODY: u64 = 8 << 20;
/// PVE's cluster CA, below `--root`.
pub const PVE_ROOT_CA: &str = "etc/pve/pve-root-ca.pem";

// ---- Token ------------------------------------------------------------------------------------

/// An API token. Its secret never appears in `Debug` output, logs or errors.
#[derive(Clone)]
pub struct Token {
    id: String,
    header: String,
}

impl Token {
    /// `user@realm!tokenid=secret` (surrounding white space ignored; a `PVEAPIToken=` prefix,
    /// as in the HTTP header, is accepted).
    pub fn parse(text: &str) -> Result<Token, ParseError> {
        let t = text.trim();
        let t = t.strip_prefix("PVEAPIToken=").unwrap_or(t);
        let shape = || ParseError::new("API token", "expected user@realm!tokenid=secret");
        let (id, secret) = t.split_once('=').ok_or_else(shape)?;
        let (user, tokenid) = id.split_once('!').ok_or_else(shape)?;
        let ok = user.split_once('@').is_some_and(|(u, r)| !u.is_empty() && !r.is_empty())
            && !tokenid.is_empty()
            && !secret.is_empty()
            && t.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(shape());
        }
        Ok(Token { id: id.to_string(), header: format!("PVEAPIToken={t}") })
    }

    /// `user@realm!tokenid`: safe to log.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, secret redacted)", self.id)
    }
}

/// Read a token file (as given, not below `--root`: it is the exporter's own configuration).
pub fn read_token_file(path: &Path) -> Result<Token, ApiError> {
    use std::io::Read;
    let err = |e: std::io::Error| ApiError::setup(format!("API token file {}", path.display()), e);
    let mut f = std::fs::File::open(path).map_err(err)?;
    // The mode of the file read, not of whatever the path names a moment later.
    if let Some(w) = f.metadata().ok().and_then(|m| super::secret::secret_file_warning(path, &m)) {
        log::warn!("{w}");
    }
    let mut text = String::new();
    // A token is some 80 bytes: a bound keeps a wrong path (a device, a huge file) harmless.
    (&mut f).take(64 << 10).read_to_string(&mut text).map_err(err)?;
    Token::parse(&text).map_err(|e| ApiError::setup(format!("API token file {}", path.display()), e.msg))
}

/// The token of the environment variable [`TOKEN_ENV`], if set.
pub fn token_from_env() -> Option<Result<Token, ApiError>> {
    let v = std::env::var_os(TOKEN_ENV)?;
    Some(
        v.into_string()
            .map_err(|_| ApiError::setup(TOKEN_ENV, "not valid UTF-8"))
            .and_then(|s| Token::parse(&s).map_err(|e| ApiError::setup(TOKEN_ENV, e.msg))),
    )
}

/// What the API client fails with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The API did not answer in time: the caller backs off from that node.
    #[error("GET {path}: no answer within {limit:?}{hint}")]
    NoAnswer { path: String, limit: Duration, hint: &'static str },
    /// The request failed, or the API answered with an error.
    #[error("GET {path}: {msg}")]
    Request { path: String, msg: String },
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The client cannot make requests: its URL, token or CA.
    #[error("{what}: {why}")]
    Setup { what: String, why: String },
}

impl ApiError {
    pub fn setup(what: impl Into<String>, why: impl fmt::Display) -> Self {
        ApiError::Setup { what: what.into(), why: why.to_string() }
    }
}

// ---- Client -----------------------------------------------------------------------------------

/// How the API's TLS certificate is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Against the certificates of this PEM file (`--pve-api-ca-file`, read as given).
    CaFile(PathBuf),
    /// Against PVE's cluster CA `/etc/pve/pve-root-ca.pem` (below `--root`) when present,
    /// else Mozilla's root certificates.
    PveRootCa,
    /// Not at all (`--pve-api-insecure`).
    Insecure,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `https://host:port` (a trailing `/` or `/api2/json` is accepted).
    pub url: String,
    /// The token, or why there is none.
    pub token: Result<Token, ApiError>,
    pub trust: Trust,
    /// Time budget of each request, retries included.
    pub timeout: Duration,
    /// Requests in flight at most.
    pub max_concurrent: usize,
}

type Certs = Arc<Vec<Certificate<'static>>>;

/// The PVE API client. Cheap to share; the connection pool is kept across scrapes.
pub struct PveApi {
    /// `https://host:port/api2/json`, or why the URL is unusable.
    base: Result<String, ApiError>,
    token: Result<Token, ApiError>,
    trust: Trust,
    /// Certificates of `--pve-api-ca-file` (read once at start), or why they cannot be used.
    ca_file: Option<Result<Certs, ApiError>>,
    /// pve-root-ca.pem, parsed again only when it changes.
    root_ca: Arc<ParsedFile<Result<Certs, ParseError>>>,
    /// The agent and the CA it trusts (None: Mozilla's roots or insecure): rebuilt when the
    /// CA changes.
    agent: Mutex<Option<(Option<Certs>, Agent)>>,
    slots: Slots,
    timeout: Duration,
}

impl fmt::Debug for PveApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PveApi").field("base", &self.base).field("token", &self.token).finish_non_exhaustive()
    }
}

/// `https://host:8006/` -> `https://host:8006/api2/json`.
pub fn base_url(url: &str) -> Result<String, ApiError> {
    let u = url.trim().trim_end_matches('/');
    let u = u.strip_suffix("/api2/json").unwrap_or(u);
    let rest = u.get(..8).filter(|s| s.eq_ignore_ascii_case("https://")).map(|_| &u[8..]).ok_or_else(|| {
        ApiError::setup(format!("--pve-api-url {url:?}"), "must start with https:// (the API takes a token)")
    })?;
    if rest.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(ApiError::setup(format!("--pve-api-url {url:?}"), "expected https://host[:port]"));
    }
    Ok(format!("https://{rest}/api2/json"))
}

/// The certificates of a PEM text.
pub fn parse_pem_certs(text: &str) -> Result<Certs, ParseError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(text.as_bytes()) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(ParseError::new("PEM", format!("not PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(ParseError::new("PEM", "no certificate in it"));
    }
    Ok(Arc::new(certs))
}

impl PveApi {
    pub fn new(s: ApiSettings) -> Self {
        let ca_file = match &s.trust {
            // Within a time limit: the file may be on pmxcfs, which can hang.
            Trust::CaFile(path) => Some({
                let p = path.clone();
                call_with_timeout("ca-file", s.timeout, move || {
                    crate::host::read_string_capped(&p, crate::host::MAX_FILE)
                })
                .and_then(|r| r)
                .map_err(|e| e.to_string())
                .and_then(|t| parse_pem_certs(&t).map_err(|e| e.to_string()))
                .map_err(|e| ApiError::setup(format!("--pve-api-ca-file {}", path.display()), e))
            }),
            _ => None,
        };
        Self {
            base: base_url(&s.url),
            token: s.token,
            trust: s.trust,
            ca_file,
            root_ca: Arc::default(),
            agent: Mutex::new(None),
            slots: Slots::new(s.max_concurrent.max(1)),
            timeout: s.timeout,
        }
    }

    /// Why requests cannot be made at all (no token, bad URL or CA file); None when they can.
    pub fn unusable(&self) -> Option<ApiError> {
        fn err<T>(r: &Result<T, ApiError>) -> Option<ApiError> {
            r.as_ref().err().cloned()
        }
        err(&self.base).or_else(|| err(&self.token)).or_else(|| self.ca_file.as_ref().and_then(err))
    }

    /// A session for one scrape: (re)builds the HTTPS agent when the CA changed. Reads
    /// pve-root-ca.pem through the pmxcfs `gate`; when that read fails, an agent built before
    /// goes on with the CA it has.
    pub fn session(
        &self,
        host: &HostRoot,
        gate: &BlockingGate,
        pmxcfs_timeout: Duration,
    ) -> Result<Session<'_>, ApiError> {
        if let Some(e) = self.unusable() {
            return Err(e);
        }
        let mut cached = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        let want: Result<Option<Certs>, ApiError> = match &self.trust {
            Trust::Insecure => Ok(None),
            Trust::CaFile(_) => match &self.ca_file {
                Some(Ok(c)) => Ok(Some(c.clone())),
                _ => Err(ApiError::setup("--pve-api-ca-file", "no CA file")),
            },
            Trust::PveRootCa => {
                let file = self.root_ca.clone();
                let path = host.path(PVE_ROOT_CA);
                match gate.call("pmxcfs", pmxcfs_timeout, move || file.get(&path, parse_pem_certs)) {
                    Ok(Ok(None)) => Ok(None),
                    Ok(Ok(Some(parsed))) => match parsed.as_ref() {
                        Ok(c) => Ok(Some(c.clone())),
                        Err(e) => Err(ApiError::setup(format!("/{PVE_ROOT_CA}"), e)),
                    },
                    Ok(Err(e)) | Err(e) => Err(ApiError::setup(format!("/{PVE_ROOT_CA}"), e)),
                }
            }
        };
        let agent = match (want, cached.as_ref()) {
            (Ok(want), Some((have, agent))) if same(&want, have) => agent.clone(),
            (Ok(want), _) => {
                let agent = self.build_agent(want.as_ref());
                *cached = Some((want, agent.clone()));
                agent
            }
            (Err(e), Some((_, agent))) => {
                log::debug!("keeping the API client's CA: {e}");
                agent.clone()
            }
            (Err(e), None) => return Err(e),
        };
        Ok(Session { api: self, agent })
    }

    fn build_agent(&self, ca: Option<&Certs>) -> Agent {
        let roots = match ca {
            Some(c) => RootCerts::Specific(c.clone()),
            None => RootCerts::WebPki,
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .disable_verification(self.trust == Trust::Insecure)
            .build();
        Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .https_only(true)
            // Straight to the node: no proxy from the environment, no redirects (the token
            // header must not follow one elsewhere).
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(self.timeout))
            .user_agent(concat!("pve-exporter/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent()
    }
}

fn same(a: &Option<Certs>, b: &Option<Certs>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// The API for one scrape.
pub struct Session<'a> {
    api: &'a PveApi,
    agent: Agent,
}

/// One failed attempt.
enum Failure {
    /// The request's whole budget is used up: nothing left to retry with.
    TimedOut,
    Other {
        msg: String,
        retry: bool,
    },
}

impl Session<'_> {
    /// GET `path` (`/nodes/pve1/status`); the body of a 200 answer.
    pub fn get(&self, path: &str) -> Result<Vec<u8>, ApiError> {
        let (Ok(base), Ok(token)) = (&self.api.base, &self.api.token) else {
            return Err(self.api.unusable().unwrap_or_else(|| ApiError::setup("PVE API", "unusable")));
        };
        let url = format!("{base}{path}");
        // Never past the deadline of the collection this thread works for.
        let timeout = crate::deadline::cap(self.api.timeout);
        let deadline = Instant::now() + timeout;
        let _slot = self.api.slots.acquire(deadline).ok_or_else(|| ApiError::Request {
            path: path.to_string(),
            msg: format!("no free request slot within {timeout:?} (--pve-api-max-concurrent)"),
        })?;
        let mut retries = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ApiError::NoAnswer { path: path.to_string(), limit: timeout, hint: "" });
            }
            let f = match self.once(&url, token, left) {
                Ok(body) => return Ok(body),
                Err(f) => f,
            };
            let (msg, retry) = match f {
                Failure::TimedOut => {
                    return Err(ApiError::NoAnswer {
                        path: path.to_string(),
                        limit: timeout,
                        hint: " (--pve-api-timeout)",
                    });
                }
                Failure::Other { msg, retry } => (msg, retry),
            };
            let wait = BACKOFF * 2u32.pow(retries);
            if !retry || retries >= RETRIES || Instant::now() + wait >= deadline {
                let tries = if retries > 0 { format!(" (after {} attempts)", retries + 1) } else { String::new() };
                return Err(ApiError::Request { path: path.to_string(), msg: format!("{msg}{tries}") });
            }
            log::debug!("GET {path}: {msg}; retrying in {wait:?}");
            std::thread::sleep(wait);
            retries += 1;
        }
    }

    fn once(&self, url: &str, token: &Token, left: Duration) -> Result<Vec<u8>, Failure> {
        let resp = self
            .agent
            .get(url)
            .header("Authorization", &token.header)
            .header("Accept", "application/json")
            .config()
            .timeout_global(Some(left))
            .build()
            .call();
        let mut resp = resp.map_err(|e| transport_failure(&e))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(MAX_BODY).read_to_vec();
        match (status, body) {
            (200, Ok(body)) => Ok(body),
            (200, Err(e)) => Err(transport_failure(&e)),
            (code, body) => {
                let detail = body.ok().map(|b| snippet(&b)).filter(|s| !s.is_empty());
                let hint = match code {
                    401 => " (authentication failed: check the API token)",
                    403 => " (permission denied: the token needs Sys.Audit on /)",
                    _ => "",
                };
                let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
                Err(Failure::Other { msg: format!("HTTP {code}{hint}{detail}"), retry: code >= 500 })
            }
        }
    }
}

fn transport_failure(e: &ureq::Error) -> Failure {
    use ureq::Error as E;
    let text = e.to_string();
    let tls = matches!(e, E::Rustls(_) | E::Tls(_)) || text.contains("certificate") || text.contains("rustls");
    match e {
        _ if tls => Failure::Other {
            msg: format!(
                "TLS: {text} (the API's certificate is not trusted: give its CA with --pve-api-ca-file, \
                 or use --pve-api-insecure)"
            ),
            retry: false,
        },
        E::BodyExceedsLimit(n) => Failure::Other { msg: format!("answer larger than {n} bytes"), retry: false },
        E::Timeout(_) => Failure::TimedOut,
        E::Io(_) | E::ConnectionFailed | E::HostNotFound | E::Protocol(_) => {
            Failure::Other { msg: format!("transport: {text}"), retry: true }
        }
        _ => Failure::Other { msg: text, retry: false },
    }
}

/// The start of an error body, printable, for the log.
fn snippet(body: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.trim().to_string()
}

/// A counting semaphore with a deadline.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Self {
        Self { free: Mutex::new(n), cv: Condvar::new() }
    }

    fn acquire(&self, deadline: Instant) -> Option<SlotGuard<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *free > 0 {
                *free -= 1;
                return Some(SlotGuard(self));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            free = self.cv.wait_timeout(free, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

// ---- Response parsers (pure) ------------------------------------------------------------------

/// The `data` member of an API answer.
pub fn data(body: &[u8]) -> Result<Value, ParseError> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| ParseError::new("API answer", format!("not JSON: {e}")).at(e.column()))?;
    match v.get_mut("data") {
        Some(d) => Ok(d.take()),
        None => Err(ParseError::new("API answer", "no \"data\"")),
    }
}

fn array(v: Value, what: &'static str) -> Result<Vec<Value>, ParseError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(Vec::new()),
        _ => Err(ParseError::new(what, "expected a list")),
    }
}

/// A cluster node of `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub node: String,
    /// `status` is `online` (offline nodes cannot answer for themselves).
    pub online: bool,
}

/// `GET /nodes`, sorted by name.
pub fn parse_nodes(body: &[u8]) -> Result<Vec<NodeEntry>, ParseError> {
    let mut out: Vec<NodeEntry> = array(data(body)?, "/nodes")?
        .iter()
        .filter_map(|n| {
            let node = n.get("node").and_then(json_string)?;
            let online = n.get("status").and_then(Value::as_str) == Some("online");
            Some(NodeEntry { node, online })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out.dedup_by(|a, b| a.node == b.node);
    Ok(out)
}

/// `GET /nodes/<node>/status`: the parts the node status collector exports. Parts the answer
/// lacks (older PVE has no `boot-info`) stay None.
pub fn parse_node_status(body: &[u8]) -> Result<NodeStatus, ParseError> {
    let d = data(body)?;
    if !d.is_object() {
        return Err(ParseError::new("node status", "expected an object"));
    }
    let num = |v: &Value, k: &str| v.get(k).and_then(json_u64);
    let load = d.get("loadavg").and_then(Value::as_array).and_then(|a| {
        let l: Vec<f64> = a.iter().filter_map(json_f64).collect();
        <[f64; 3]>::try_from(l.get(..3)?).ok()
    });
    let swap = d
        .get("swap")
        .and_then(|s| Some(Swap { total: num(s, "total")?, used: num(s, "used")?, free: num(s, "free")? }));
    let rootfs = d
        .get("rootfs")
        .and_then(|r| Some(Rootfs { total: num(r, "total")?, used: num(r, "used")?, avail: num(r, "avail")? }));
    let ksm_shared = d.get("ksm").and_then(|k| num(k, "shared"));
    let boot = d.get("boot-info").and_then(|b| {
        Some(BootInfo {
            mode: b.get("mode").and_then(json_string)?,
            secureboot: b.get("secureboot").and_then(json_bool).unwrap_or(false),
        })
    });
    Ok(NodeStatus { load, swap, rootfs, ksm_shared, boot })
}

/// `GET /nodes/<node>/qemu`: the pressure of the running VMs, sorted by vmid (values 0..100
/// become ratios 0..1). Stopped VMs, and running ones without pressure fields (PVE before
/// 9.0), have none.
pub fn parse_qemu_pressure(body: &[u8]) -> Result<Vec<VmPressure>, ParseError> {
    const FIELDS: [&str; 6] = [
        "pressurecpusome",
        "pressurecpufull",
        "pressurememorysome",
        "pressurememoryfull",
        "pressureiosome",
        "pressureiofull",
    ];
    let mut out = Vec::new();
    for vm in array(data(body)?, "/qemu")? {
        if vm.get("status").and_then(Value::as_str) != Some("running") {
            continue;
        }
        let Some(vmid) = vm.get("vmid").and_then(json_u64).and_then(|v| u32::try_from(v).ok()) else { continue };
        let ratios = FIELDS.map(|f| vm.get(f).and_then(json_f64).map(|p| p / 100.0));
        if ratios.iter().any(Option::is_some) {
            out.push((vmid, VmPressure { id: vmid.to_string(), ratios }));
        }
    }
    out.sort_by_key(|(vmid, _)| *vmid);
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// `GET /cluster/ha/status/manager_status`: the manager status and the LRM status of each
/// node.
pub fn parse_ha_manager_status(body: &[u8]) -> Result<(ManagerStatus, BTreeMap<String, LrmStatus>), ParseError> {
    let d = data(body)?;
    let manager = ha::manager_status_from_json(d.get("manager_status").unwrap_or(&Value::Null))?;
    let mut lrm = BTreeMap::new();
    if let Some(Value::Object(l)) = d.get("lrm_status") {
        for (node, st) in l {
            lrm.insert(node.clone(), ha::lrm_status_from_json(st));
        }
    }
    Ok((manager, lrm))
}

/// `GET /cluster/ha/resources`.
pub fn parse_ha_resources(body: &[u8]) -> Result<Vec<HaResource>, ParseError> {
    Ok(array(data(body)?, "/cluster/ha/resources")?.iter().filter_map(ha::resource_from_json).collect())
}

/// A disk of `GET /nodes/<node>/disks/list`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhysicalDisk {
    pub devpath: String,
    /// SMART health as PVE gives it: what `smartctl -H` prints after `self-assessment test
    /// result: ` (ATA, NVMe: `PASSED`, `FAILED!`) or `Health Status: ` (SAS/SCSI: `OK`, or an
    /// informational exception such as `FAILURE PREDICTION THRESHOLD EXCEEDED [...]`), or PVE's
    /// own `SMART Disabled`, `UNKNOWN` (no SMART data); empty when the API gives none.
    pub health: String,
    /// Wear-out remaining, 0..1; None when the disk does not report one (`N/A`).
    pub wearout_remaining: Option<f64>,
    pub size: Option<u64>,
    pub model: String,
    pub serial: String,
    /// `hdd`, `ssd`, `nvme`, `usb`, ...
    pub kind: String,
    /// What uses the disk (`LVM`, `ZFS`, `mounted`, `partitions`, ...; empty: unused).
    pub used: String,
    /// Ceph OSD ids on the disk.
    pub osds: Vec<u64>,
}

impl PhysicalDisk {
    /// Whether SMART says the disk is healthy: `PASSED` (ATA, NVMe) and `OK` (SAS) are; any
    /// other verdict smartctl prints is not; None when there is no verdict (`UNKNOWN`,
    /// `SMART Disabled`, nothing).
    pub fn healthy(&self) -> Option<bool> {
        match self.health.as_str() {
            "PASSED" | "OK" => Some(true),
            "" | "UNKNOWN" | "SMART Disabled" => None,
            _ => Some(false),
        }
    }
}

/// `GET /nodes/<node>/disks/list`, sorted by devpath.
pub fn parse_disks(body: &[u8]) -> Result<Vec<PhysicalDisk>, ParseError> {
    let mut out = Vec::new();
    for d in array(data(body)?, "/disks/list")? {
        let Some(devpath) = d.get("devpath").and_then(json_string).filter(|s| !s.is_empty()) else { continue };
        let s = |k: &str| d.get(k).and_then(json_string).unwrap_or_default();
        // One OSD per item of osdid-list; PVE before 7 had only osdid (-1: none).
        let mut osds: Vec<u64> = match d.get("osdid-list") {
            Some(Value::Array(l)) => l.iter().filter_map(json_u64).collect(),
            _ => d.get("osdid").and_then(json_u64).into_iter().collect(),
        };
        osds.sort_unstable();
        osds.dedup();
        out.push(PhysicalDisk {
            health: s("health").trim().to_string(),
            wearout_remaining: d
                .get("wearout")
                .and_then(json_f64)
                .filter(|w| (0.0..=100.0).contains(w))
                .map(|w| w / 100.0),
            size: d.get("size").and_then(json_u64),
            model: s("model"),
            serial: s("serial"),
            kind: s("type"),
            used: s("used"),
            osds,
            devpath,
        });
    }
    out.sort_by(|a, b| a.devpath.cmp(&b.devpath));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = Token::parse("monitor@pve!metrics=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\n").unwrap();
        assert_eq!(t.id(), "monitor@pve!metrics");
        assert_eq!(t.header, "PVEAPIToken=monitor@pve!metrics=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("aaaa"), "the secret leaks into Debug: {dbg}");
        assert_eq!(Token::parse("PVEAPIToken=a@b!c=d").unwrap().id(), "a@b!c");
        for bad in
            ["", "secret", "a@b!c", "a@b!c=", "ab!c=d", "@b!c=d", "a@!c=d", "a@b!=d", "a@b!c=d e", "a@b!c=d\u{7f}"]
        {
            let e = Token::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("d e"), "{e}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(base_url("https://localhost:8006").unwrap(), "https://localhost:8006/api2/json");
        assert_eq!(base_url("https://pve1:8006/").unwrap(), "https://pve1:8006/api2/json");
        assert_eq!(base_url("HTTPS://pve1:8006/api2/json/").unwrap(), "https://pve1:8006/api2/json");
        for bad in ["http://pve1:8006", "pve1:8006", "https://", "https://a b", "ftp://x", ""] {
            assert!(base_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slots_are_bounded() {
        let s = Slots::new(2);
        let a = s.acquire(Instant::now()).unwrap();
        let _b = s.acquire(Instant::now()).unwrap();
        assert!(s.acquire(Instant::now()).is_none(), "a third slot");
        drop(a);
        assert!(s.acquire(Instant::now()).is_some());
    }

    #[test]
    fn envelope() {
        assert_eq!(data(br#"{"data":[1]}"#).unwrap(), serde_json::json!([1]));
        assert!(data(b"<html>").is_err());
        assert!(data(br#"{"errors":{}}"#).is_err());
    }

    #[test]
    fn node_status_of_the_spec() {
        let body =
            br#"{"data":{"loadavg":["3.12","2.88","2.79"],"swap":{"total":8589930496,"used":0,"free":8589930496},
            "rootfs":{"used":28747304960,"total":100861726720,"avail":66943684608,"free":72114421760},
            "ksm":{"shared":0},"boot-info":{"mode":"efi","secureboot":0},"cpu":0.01}}"#;
        let st = parse_node_status(body).unwrap();
        assert_eq!(st.load, Some([3.12, 2.88, 2.79]));
        assert_eq!(st.swap, Some(Swap { total: 8_589_930_496, used: 0, free: 8_589_930_496 }));
        assert_eq!(st.rootfs, Some(Rootfs { total: 100_861_726_720, used: 28_747_304_960, avail: 66_943_684_608 }));
        assert_eq!(st.ksm_shared, Some(0));
        assert_eq!(st.boot, Some(BootInfo { mode: "efi".into(), secureboot: false }));
        // PVE before 8.1: no boot-info; legacy BIOS: no secureboot; a bool secureboot.
        let st = parse_node_status(br#"{"data":{"loadavg":["1","2"]}}"#).unwrap();
        assert_eq!(st, NodeStatus::default());
        let st = parse_node_status(br#"{"data":{"boot-info":{"mode":"legacy-bios"}}}"#).unwrap();
        assert_eq!(st.boot, Some(BootInfo { mode: "legacy-bios".into(), secureboot: false }));
        let st = parse_node_status(br#"{"data":{"boot-info":{"mode":"efi","secureboot":true}}}"#).unwrap();
        assert!(st.boot.unwrap().secureboot);
        assert!(parse_node_status(br#"{"data":[]}"#).is_err());
    }

    #[test]
    fn qemu_pressure() {
        let body = br#"{"data":[
            {"vmid":112,"status":"running","pressurecpusome":12.5,"pressurecpufull":0,"pressurememorysome":"1.5",
             "pressurememoryfull":0,"pressureiosome":50,"pressureiofull":25},
            {"vmid":"110","status":"running","pressurecpusome":0,"pressurecpufull":0,"pressurememorysome":0,
             "pressurememoryfull":0,"pressureiosome":0,"pressureiofull":0},
            {"vmid":113,"status":"stopped"},
            {"vmid":114,"status":"running"},
            {"status":"running","pressurecpusome":1}]}"#;
        let p = parse_qemu_pressure(body).unwrap();
        assert_eq!(p.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), ["110", "112"]);
        assert_eq!(p[1].ratios, [Some(0.125), Some(0.0), Some(0.015), Some(0.0), Some(0.5), Some(0.25)]);
        assert!(parse_qemu_pressure(br#"{"data":{}}"#).is_err());
        assert!(parse_qemu_pressure(br#"{"data":null}"#).unwrap().is_empty());
    }

    #[test]
    fn ha_of_the_spec() {
        let body = br#"{"data":{"manager_status":{"master_node":"node03","node_status":{"node01":"online","node03":"online"},
            "service_status":{"vm:106":{"node":"node04","running":1,"state":"started"}}},
            "lrm_status":{"node01":{"mode":"active","state":"wait_for_agent_lock","timestamp":1774016351},"node03":{}}}}"#;
        let (m, lrm) = parse_ha_manager_status(body).unwrap();
        assert_eq!(m.master_node.as_deref(), Some("node03"));
        assert_eq!(lrm["node01"], LrmStatus { mode: Some("active".into()), timestamp: Some(1_774_016_351.0) });
        assert_eq!(lrm["node03"], LrmStatus::default());
        let r = parse_ha_resources(
            br#"{"data":[{"sid":"vm:106","type":"vm","state":"started","max_restart":2,"max_relocate":2,"failback":1}]}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            [HaResource { sid: "vm:106".into(), kind: "vm".into(), max_restart: 2, max_relocate: 2, failback: true }]
        );
        assert!(parse_ha_manager_status(br#"{"data":{"manager_status":[]}}"#).is_err());
    }

    #[test]
    fn disks_of_the_spec() {
        let body = br#"{"data":[
            {"devpath":"/dev/nvme0n1","health":"PASSED","wearout":100,"size":7681501126656,"model":"VV007680KYFFL",
             "serial":"ADD3NA317I0104K2N","type":"nvme","used":"LVM","osdid":"8","osdid-list":["8"]},
            {"devpath":"/dev/sda","health":"UNKNOWN","wearout":"N/A","size":4000787030016,"model":"HDD","serial":"S1",
             "type":"hdd","osdid":-1,"osdid-list":null},
            {"devpath":"/dev/nvme1n1","health":"FAILED!","wearout":"97","size":1,"type":"nvme","osdid":"3","osdid-list":["3","4","x",4]},
            {"devpath":"/dev/sdb","health":"","osdid":"12"},
            {"health":"PASSED"}]}"#;
        let d = parse_disks(body).unwrap();
        assert_eq!(
            d.iter().map(|d| d.devpath.as_str()).collect::<Vec<_>>(),
            ["/dev/nvme0n1", "/dev/nvme1n1", "/dev/sda", "/dev/sdb"]
        );
        let verdicts: Vec<Option<bool>> = d.iter().map(PhysicalDisk::healthy).collect();
        assert_eq!(verdicts, [Some(true), Some(false), None, None]);
        // Every health text PVE gives (pve-storage's Diskmanage: smartctl's verdict line).
        let disk = |h: &str| PhysicalDisk { health: h.into(), ..d[0].clone() }.healthy();
        assert_eq!(disk("OK"), Some(true), "SAS disks are healthy with OK");
        assert_eq!(disk("PASSED"), Some(true));
        assert_eq!(disk("FAILED!"), Some(false));
        assert_eq!(disk("FAILURE PREDICTION THRESHOLD EXCEEDED [asc=5d, ascq=10]"), Some(false));
        assert_eq!(disk("SMART Disabled"), None);
        assert_eq!(disk("UNKNOWN"), None);
        assert_eq!(d[0].wearout_remaining, Some(1.0));
        assert_eq!(d[1].wearout_remaining, Some(0.97));
        assert_eq!(d[2].wearout_remaining, None, "N/A");
        assert_eq!((d[0].osds.clone(), d[1].osds.clone(), d[2].osds.clone()), (vec![8], vec![3, 4], vec![]));
        assert_eq!(d[3].osds, [12], "osdid without osdid-list");
        assert_eq!((d[2].used.as_str(), d[3].size), ("", None));
        assert!(parse_disks(br#"{"data":"x"}"#).is_err());
    }

    #[test]
    fn nodes() {
        let n = parse_nodes(
            br#"{"data":[{"node":"pve2","status":"online"},{"node":"pve1","status":"offline"},{"status":"online"}]}"#,
        )
        .unwrap();
        assert_eq!(
            n,
            [NodeEntry { node: "pve1".into(), online: false }, NodeEntry { node: "pve2".into(), online: true }]
        );
    }

    #[test]
    fn pem() {
        assert!(parse_pem_certs("").is_err());
        assert!(parse_pem_certs("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
    }
}
