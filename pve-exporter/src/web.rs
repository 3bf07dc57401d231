//! Endpoint security from `--web.config.file`, in the web configuration format Prometheus
//! exporters share (exporter-toolkit): TLS (`tls_server_config`), HTTP basic auth against
//! bcrypt hashes (`basic_auth_users`) and extra response headers (`http_server_config`).
//!
//! [`parse`] turns the file's text into a [`WebConfig`] without touching the file system;
//! [`WebRuntime::load`] reads the files it names and builds the TLS acceptor; the server asks
//! a [`WebHandle`], which SIGHUP swaps whole.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring as provider},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// Time a client has to complete the TLS handshake.
/// The web config file and the PEM files it names: a few KiB each (a certificate chain, a
/// list of users); anything over this is not one.
const MAX_CONFIG_FILE: u64 = 1 << 20;

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a PEM block comes from: a file (`cert_file`) or the config itself (`cert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

/// `client_auth_type`, with Go's crypto/tls meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    /// Ask for a certificate, accept any or none (not verified).
    RequestClientCert,
    /// Require a certificate, any (not verified).
    RequireAnyClientCert,
    /// Verify a certificate against the client CA when one is sent.
    VerifyClientCertIfGiven,
    /// Require a certificate signed by the client CA: the only setting that authenticates clients.
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    X25519,
    P256,
    P384,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites by their IANA (= Go) names, in preference order; empty: all of them.
    /// TLS 1.3 suites are always on, as in Go.
    pub cipher_suites: Vec<String>,
    pub prefer_server_cipher_suites: bool,
    /// Key exchange groups in preference order; empty: all of them.
    pub curves: Vec<Curve>,
}

/// The web configuration file, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// None: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Response headers (`http_server_config.headers`), blank values left out.
    pub headers: Vec<(String, String)>,
    /// User name → bcrypt hash. Empty: no authentication.
    pub users: BTreeMap<String, String>,
}

// The file as written. Unknown keys are errors, as in exporter-toolkit (a typo must not
// silently leave the endpoint open).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth_type: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Headers exporter-toolkit allows, with the values it accepts (None: any).
const ALLOWED_HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Content-Security-Policy", None),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-XSS-Protection", None),
    ("Strict-Transport-Security", None),
];

/// Parse and check a web configuration file. `base` is the file's directory: relative file
/// names in it are relative to the file, as in exporter-toolkit.
pub fn parse(text: &str, base: &Path) -> Result<WebConfig, String> {
    // An empty file (or one of comments only) is YAML null: no TLS, no auth.
    let raw: Option<RawConfig> = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let raw = raw.unwrap_or_default();
    if raw.rate_limit.is_some() {
        return Err("rate_limit is not supported by pve-exporter".into());
    }
    let tls = match raw.tls_server_config {
        Some(t) => parse_tls(t, base)?,
        None => None,
    };
    let mut headers = Vec::new();
    if let Some(http) = raw.http_server_config {
        // http2 is accepted and ignored: the exporter speaks HTTP/1.1 only.
        let _ = http.http2;
        for (name, value) in http.headers.unwrap_or_default() {
            let Some((canonical, allowed)) = ALLOWED_HEADERS.iter().find(|(h, _)| h.eq_ignore_ascii_case(&name)) else {
                return Err(format!("http_server_config.headers: {name:?} is not a header that can be set"));
            };
            if value.trim().is_empty() {
                continue;
            }
            if let Some(allowed) = allowed
                && !allowed.iter().any(|a| a.eq_ignore_ascii_case(value.trim()))
            {
                return Err(format!("http_server_config.headers: {canonical}: {value:?} is not one of {allowed:?}"));
            }
            HeaderValue::from_str(&value).map_err(|_| format!("http_server_config.headers: {canonical}: bad value"))?;
            headers.push((canonical.to_string(), value));
        }
    }
    let users = raw.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        if user.contains(':') {
            return Err(format!("basic_auth_users: user name {user:?} contains ':', which basic auth cannot send"));
        }
        hash.parse::<bcrypt::HashParts>()
            .map_err(|e| format!("basic_auth_users: the password of {user:?} is not a bcrypt hash: {e}"))?;
    }
    Ok(WebConfig { tls, headers, users })
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn pem_source(inline: Option<String>, file: Option<String>, what: &str, base: &Path) -> Result<Option<Pem>, String> {
    match (nonempty(inline), nonempty(file)) {
        (Some(_), Some(_)) => Err(format!("tls_server_config: both {what} and {what}_file are set")),
        (Some(text), None) => Ok(Some(Pem::Inline(text))),
        (None, Some(f)) => Ok(Some(Pem::File(base.join(f)))),
        (None, None) => Ok(None),
    }
}

fn parse_tls(t: RawTls, base: &Path) -> Result<Option<TlsSettings>, String> {
    let auth_type = nonempty(t.client_auth_type);
    let cert = pem_source(t.cert, t.cert_file, "cert", base)?;
    let key = pem_source(t.key, t.key_file, "key", base)?;
    let client_ca = pem_source(t.client_ca, t.client_ca_file, "client_ca", base)?;
    // TLS is on when any of these is set; then cert and key must be complete.
    if cert.is_none() && key.is_none() && client_ca.is_none() && auth_type.is_none() {
        return Ok(None);
    }
    let cert = cert.ok_or("tls_server_config: missing one of cert or cert_file")?;
    let key = key.ok_or("tls_server_config: missing one of key or key_file")?;
    let client_auth = match auth_type.as_deref().unwrap_or("NoClientCert") {
        "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => return Err(format!("tls_server_config: invalid client_auth_type {other:?}")),
    };
    match (client_auth, &client_ca) {
        (ClientAuth::NoClientCert, Some(_)) => {
            return Err("tls_server_config: a client CA is set but client_auth_type is NoClientCert \
                        (use RequireAndVerifyClientCert to authenticate clients)"
                .into());
        }
        (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert, None) => {
            return Err(format!(
                "tls_server_config: client_auth_type {client_auth:?} needs client_ca_file or client_ca"
            ));
        }
        _ => {}
    }
    if t.client_allowed_sans.is_some() {
        return Err("tls_server_config: client_allowed_sans is not supported by pve-exporter".into());
    }
    let version = |v: Option<String>, default| match nonempty(v).as_deref() {
        None => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(v @ ("TLS10" | "TLS11")) => Err(format!("tls_server_config: {v} is not supported (TLS12 and TLS13 are)")),
        Some(v) => Err(format!("tls_server_config: unknown TLS version {v:?}")),
    };
    let min_version = version(t.min_version, TlsVersion::Tls12)?;
    let max_version = version(t.max_version, TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    let mut cipher_suites = Vec::new();
    for name in t.cipher_suites.unwrap_or_default() {
        let known = provider::ALL_CIPHER_SUITES.iter().any(|s| s.suite().as_str() == Some(name.as_str()));
        // Go lists the TLS 1.3 suites under these names; like Go, they cannot be turned off.
        let tls13 = matches!(
            name.as_str(),
            "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256"
        );
        if !known && !tls13 {
            return Err(format!("tls_server_config: unknown or unsupported cipher suite {name:?}"));
        }
        if !tls13 {
            cipher_suites.push(name);
        }
    }
    let mut curves = Vec::new();
    for name in t.curve_preferences.unwrap_or_default() {
        curves.push(match name.as_str() {
            "X25519" => Curve::X25519,
            "CurveP256" => Curve::P256,
            "CurveP384" => Curve::P384,
            "CurveP521" => return Err("tls_server_config: CurveP521 is not supported".into()),
            other => return Err(format!("tls_server_config: unknown curve {other:?}")),
        });
    }
    Ok(Some(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        min_version,
        max_version,
        cipher_suites,
        prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
        curves,
    }))
}

fn read_pem(p: &Pem, what: &str) -> Result<Vec<u8>, String> {
    match p {
        Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
        Pem::File(path) => crate::host::read_capped(path, MAX_CONFIG_FILE)
            .map_err(|e| format!("cannot read {what} {}: {e}", path.display())),
    }
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate found"));
    }
    Ok(certs)
}

/// The rustls server configuration of `tls`. Reads the certificate, key and CA files.
pub fn server_config(tls: &TlsSettings) -> Result<ServerConfig, String> {
    let certs = certificates(&read_pem(&tls.cert, "cert_file")?, "cert")?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&tls.key, "key_file")?)
        .map_err(|e| format!("key: no PEM private key: {e}"))?;

    let mut crypto = provider::default_provider();
    if !tls.cipher_suites.is_empty() {
        let all = std::mem::take(&mut crypto.cipher_suites);
        // TLS 1.3 first, then the TLS 1.2 suites in the configured order.
        crypto.cipher_suites = all.iter().filter(|s| s.tls13().is_some()).copied().collect();
        for name in &tls.cipher_suites {
            crypto.cipher_suites.extend(all.iter().filter(|s| s.suite().as_str() == Some(name.as_str())));
        }
    }
    if !tls.curves.is_empty() {
        crypto.kx_groups = tls
            .curves
            .iter()
            .map(|c| match c {
                Curve::X25519 => provider::kx_group::X25519,
                Curve::P256 => provider::kx_group::SECP256R1,
                Curve::P384 => provider::kx_group::SECP384R1,
            })
            .collect();
    }
    let crypto = Arc::new(crypto);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (tls.min_version..=tls.max_version).contains(v))
            .map(|(_, p)| p)
            .collect();
    let builder = ServerConfig::builder_with_provider(crypto.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS settings: {e}"))?;

    let roots = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(&read_pem(ca, "client_ca_file")?, "client_ca")? {
                roots.add(c).map_err(|e| format!("client_ca: {e}"))?;
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match (tls.client_auth, roots) {
        (ClientAuth::NoClientCert, _) => None,
        (ClientAuth::RequestClientCert, _) => Some(Arc::new(AnyClientCert::new(&crypto, false))),
        (ClientAuth::RequireAnyClientCert, _) => Some(Arc::new(AnyClientCert::new(&crypto, true))),
        (ClientAuth::VerifyClientCertIfGiven, Some(roots)) => Some(
            WebPkiClientVerifier::builder_with_provider(roots, crypto.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client_ca: {e}"))?,
        ),
        (ClientAuth::RequireAndVerifyClientCert, Some(roots)) => Some(
            WebPkiClientVerifier::builder_with_provider(roots, crypto.clone())
                .build()
                .map_err(|e| format!("client_ca: {e}"))?,
        ),
        (auth, None) => return Err(format!("client_auth_type {auth:?} needs a client CA")),
    };
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_single_cert(certs, key).map_err(|e| format!("cert and key do not make a usable pair: {e}"))?;
    config.ignore_client_order = tls.prefer_server_cipher_suites;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Go's RequestClientCert / RequireAnyClientCert: a client certificate is asked for (and
/// required) but not checked against a CA; only the handshake signature is verified, so the
/// client holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl AnyClientCert {
    fn new(crypto: &CryptoProvider, mandatory: bool) -> Self {
        Self { algorithms: crypto.signature_verification_algorithms, mandatory }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The credentials of an `Authorization: Basic …` header value.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    // Constant time for equal lengths: a cached password is not found by timing.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Basic auth against bcrypt hashes.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// The password last verified for each user: bcrypt costs tens of ms per check, and
    /// Prometheus sends the same credentials every scrape.
    verified: Mutex<HashMap<String, Vec<u8>>>,
    /// bcrypt runs at once: wrong passwords are not cached, and a flood of them must not
    /// take every blocking thread.
    slots: Arc<tokio::sync::Semaphore>,
    /// Checks running or waiting for a slot: past the slots + the queue bound a check is
    /// answered 503 at once, so a flood of wrong passwords cannot pile up requests (and their
    /// connections) behind the slots.
    in_check: AtomicUsize,
    /// bcrypt checks that run at once: [`bcrypt_slots`].
    slot_count: usize,
}

/// bcrypt checks that run at once: a quarter of the host's CPUs, at least one and at most two.
/// Each check keeps a CPU busy for tens of ms (cost 10), and wrong passwords are not cached, so
/// a flood of them keeps every slot busy: on a node with 2 to 7 CPUs two slots would give the
/// flood half the machine or all of it, and the guests' vCPUs would pay (the soak harness
/// measures it: `cargo xtask soak`).
fn bcrypt_slots() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 4).clamp(1, 2)
}
/// How long a check waits for a bcrypt slot before it is answered 503: the queue bound alone
/// lets a waiting request sit for (queue ÷ slots) checks, seconds with a high bcrypt cost.
const BCRYPT_WAIT: Duration = Duration::from_secs(2);

/// The outcome of a basic-auth check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthCheck {
    Allowed,
    Denied,
    /// Too many checks waiting for bcrypt: try again later (503).
    Busy,
}

/// Counts a check in `in_check` while it lives.
struct InCheck<'a>(&'a AtomicUsize);

impl Drop for InCheck<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        Self {
            users,
            verified: Mutex::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(bcrypt_slots())),
            in_check: AtomicUsize::new(0),
            slot_count: bcrypt_slots(),
        }
    }

    /// Whether the `Authorization` header names a user with the right password; `Busy` when
    /// the check would need bcrypt and `max_waiting` checks wait for it already, or no slot
    /// came free within `BCRYPT_WAIT`.
    pub async fn check(&self, authorization: Option<&HeaderValue>, max_waiting: usize) -> AuthCheck {
        let Some((user, pass)) = authorization.and_then(|v| v.to_str().ok()).and_then(parse_basic) else {
            return AuthCheck::Denied;
        };
        {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified.get(&user).is_some_and(|p| same_bytes(p, pass.as_bytes())) {
                return AuthCheck::Allowed;
            }
        }
        // An unknown user costs a bcrypt run as well, so timing does not tell user names apart.
        let (known, hash) = match self.users.get(&user) {
            Some(h) => (true, h.clone()),
            None => match self.users.values().next() {
                Some(h) => (false, h.clone()),
                None => return AuthCheck::Denied,
            },
        };
        let _counted = InCheck(&self.in_check);
        if self.in_check.fetch_add(1, Ordering::AcqRel) >= self.slot_count + max_waiting {
            return AuthCheck::Busy;
        }
        let _permit = match tokio::time::timeout(BCRYPT_WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return AuthCheck::Denied, // closed: never happens, the semaphore lives with self
            Err(_) => return AuthCheck::Busy,
        };
        let candidate = pass.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(candidate, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok && known {
            self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(user, pass.into_bytes());
            AuthCheck::Allowed
        } else {
            AuthCheck::Denied
        }
    }
}

/// The loaded web configuration: what the server applies to connections and requests.
pub struct WebRuntime {
    pub source: Option<PathBuf>,
    pub tls: Option<TlsAcceptor>,
    pub auth: Option<BasicAuth>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl WebRuntime {
    /// Plain HTTP, no authentication.
    pub fn open() -> Self {
        Self { source: None, tls: None, auth: None, headers: Vec::new() }
    }

    /// Read `path` (None: plain HTTP) and the files it names. Blocking.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        let Some(path) = path else { return Ok(Self::open()) };
        let text = crate::host::read_string_capped(path, MAX_CONFIG_FILE)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let config = parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))?;
        let tls = match &config.tls {
            Some(t) => {
                Some(TlsAcceptor::from(Arc::new(server_config(t).map_err(|e| format!("{}: {e}", path.display()))?)))
            }
            None => None,
        };
        let headers = config
            .headers
            .iter()
            .filter_map(|(k, v)| Some((HeaderName::from_bytes(k.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?)))
            .collect();
        let auth = (!config.users.is_empty()).then(|| BasicAuth::new(config.users));
        Ok(Self { source: Some(path.to_path_buf()), tls, auth, headers })
    }

    /// One line for the log: what this configuration does.
    pub fn describe(&self) -> String {
        let tls = if self.tls.is_some() { "TLS" } else { "plain HTTP" };
        let auth = match &self.auth {
            Some(a) => format!("basic auth ({} users)", a.users.len()),
            None => "no authentication".into(),
        };
        match &self.source {
            Some(p) => format!("{tls}, {auth} (from {})", p.display()),
            None => format!("{tls}, {auth}"),
        }
    }
}

/// The current web configuration, replaced whole on reload. Connections take it when they
/// are accepted (TLS), requests when they arrive (auth, headers).
#[derive(Clone)]
pub struct WebHandle(Arc<RwLock<Arc<WebRuntime>>>);

impl WebHandle {
    pub fn new(web: WebRuntime) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(web))))
    }

    pub fn current(&self) -> Arc<WebRuntime> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, web: WebRuntime) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(web);
    }
}

/// A connection after the TLS handshake (if TLS is on), over the stream `S` (the socket, as the
/// server wraps it: [`crate::http_limits::Limited`]).
pub enum Conn<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Take a new connection through TLS when it is on. `wrap` turns the socket into the stream
/// the connection runs on, once the first byte told plain HTTP from TLS. None: the connection
/// is done (failed handshake, or plain HTTP to the TLS port, which gets a 400 saying so).
pub async fn accept<S>(
    web: &WebRuntime,
    stream: TcpStream,
    peer: SocketAddr,
    wrap: impl FnOnce(TcpStream) -> S,
) -> Option<Conn<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(acceptor) = &web.tls else { return Some(Conn::Plain(wrap(stream))) };
    let handshake = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE {
            let mut stream = wrap(stream);
            let body = "Client sent an HTTP request to an HTTPS server.\n";
            let reply = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).await?;
            stream.shutdown().await?;
            return Ok(None);
        }
        acceptor.accept(wrap(stream)).await.map(Some)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(Some(tls))) => Some(Conn::Tls(Box::new(tls))),
        Ok(Ok(None)) => {
            log::debug!("{peer}: plain HTTP on the TLS port, answered 400");
            None
        }
        Ok(Err(e)) => {
            log::debug!("{peer}: TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            log::debug!("{peer}: TLS handshake not done within {HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

/// What the [`guard`] middleware needs: the current web configuration and the bound of the
/// bcrypt queue (`--web.max-auth-waiting`).
#[derive(Clone)]
pub struct GuardState {
    pub web: WebHandle,
    pub max_auth_waiting: usize,
}

/// Middleware: basic auth (when configured) and the configured response headers.
pub async fn guard(State(g): State<GuardState>, req: Request, next: Next) -> Response {
    let current = g.web.current();
    let check = match &current.auth {
        Some(auth) => auth.check(req.headers().get(header::AUTHORIZATION), g.max_auth_waiting).await,
        None => AuthCheck::Allowed,
    };
    let mut resp = match check {
        AuthCheck::Allowed => next.run(req).await,
        AuthCheck::Denied => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"pve-exporter\""))],
            "Unauthorized\n",
        )
            .into_response(),
        AuthCheck::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
            "Too many password checks at once (--web.max-auth-waiting); try again later\n",
        )
            .into_response(),
    };
    for (k, v) in &current.headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> String {
        bcrypt::hash("pw", 4).unwrap()
    }

    fn p(text: &str) -> Result<WebConfig, String> {
        parse(text, Path::new("/etc/pve-exporter"))
    }

    #[test]
    fn empty_and_comment_only_files_mean_plain_http() {
        assert_eq!(p("").unwrap(), WebConfig::default());
        assert_eq!(p("# nothing yet\n").unwrap(), WebConfig::default());
        assert_eq!(p("tls_server_config:\nbasic_auth_users:\n").unwrap(), WebConfig::default());
    }

    #[test]
    fn full_tls_and_auth() {
        let c = p(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  client_ca_file: ca.crt\n  \
             client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n  curve_preferences: [X25519, CurveP256]\n\
             http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    Content-Security-Policy: \"\"\n\
             basic_auth_users:\n  prometheus: {}\n",
            hash()
        ))
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, Pem::File("/etc/pve-exporter/server.crt".into()));
        assert_eq!(tls.key, Pem::File("/abs/server.key".into()));
        assert_eq!(tls.client_ca, Some(Pem::File("/etc/pve-exporter/ca.crt".into())));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!((tls.min_version, tls.max_version), (TlsVersion::Tls13, TlsVersion::Tls13));
        assert_eq!(tls.curves, [Curve::X25519, Curve::P256]);
        assert!(tls.prefer_server_cipher_suites);
        assert_eq!(c.headers, [("X-Frame-Options".to_string(), "deny".to_string())]);
        assert!(c.users.get("prometheus").is_some_and(|h| h.starts_with("$2b$04$")));
    }

    #[test]
    fn inline_pem_and_cipher_suites() {
        let c = p(
            "tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n    x\n    -----END CERTIFICATE-----\n  \
                   key: k\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n  \
                   prefer_server_cipher_suites: false\n",
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert!(matches!(tls.cert, Pem::Inline(ref s) if s.starts_with("-----BEGIN CERTIFICATE-----\nx\n")));
        assert_eq!(tls.key, Pem::Inline("k".into()));
        assert_eq!(tls.cipher_suites, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
        assert!(!tls.prefer_server_cipher_suites);
    }

    #[test]
    fn mistakes_are_errors_not_an_open_endpoint() {
        let colon = format!("basic_auth_users:\n  \"a:b\": \"{}\"\n", hash());
        let bad = [
            ("tls_server_config:\n  cert_file: a\n", "missing one of key"),
            ("tls_server_config:\n  key_file: a\n", "missing one of cert"),
            ("tls_server_config:\n  cert_file: a\n  cert: b\n  key_file: k\n", "both cert and cert_file"),
            ("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n", "missing one of cert"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n",
                "invalid client_auth_type",
            ),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n", "NoClientCert"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
                "needs client_ca_file",
            ),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n", "not supported"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  max_version: TLS99\n", "unknown TLS version"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n",
                "above max_version",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
                "cipher",
            ),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]\n", "CurveP521"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n", "client_allowed_sans"),
            ("tls_server_config:\n  cert_fiel: a\n", "unknown field"),
            ("tls_config:\n  cert_file: a\n", "unknown field"),
            ("rate_limit:\n  interval: 1s\n  burst: 2\n", "rate_limit"),
            ("http_server_config:\n  headers:\n    Server: x\n", "not a header that can be set"),
            ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "not one of"),
            ("basic_auth_users:\n  alice: secret\n", "not a bcrypt hash"),
            (colon.as_str(), "contains ':'"),
            ("basic_auth_users: [alice]\n", "invalid type"),
            ("tls_server_config: [\n", ""),
        ];
        for (text, want) in bad {
            let e = p(text).expect_err(text);
            assert!(e.contains(want), "{text:?}: {e:?} should mention {want:?}");
        }
    }

    #[test]
    fn basic_header() {
        let enc = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert_eq!(parse_basic(&enc("alice:s3:cr:et")), Some(("alice".into(), "s3:cr:et".into())));
        assert_eq!(parse_basic(&enc("alice:")), Some(("alice".into(), String::new())));
        assert_eq!(parse_basic(&enc("alice").replace("Basic", "basic")), None);
        assert_eq!(parse_basic(&enc("a:b").replace("Basic", "bAsIc")), Some(("a".into(), "b".into())));
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic(""), None);
    }

    fn basic(u: &str, pw: &str) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"))
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn basic_auth_checks_bcrypt_and_caches_only_successes() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)]));
        let check = |h: Option<HeaderValue>| {
            let auth = &auth;
            async move { auth.check(h.as_ref(), 16).await }
        };
        assert_eq!(check(None).await, AuthCheck::Denied);
        assert_eq!(check(Some(basic("prom", "wrong"))).await, AuthCheck::Denied);
        assert_eq!(
            check(Some(basic("eve", "right"))).await,
            AuthCheck::Denied,
            "an unknown user with a known password"
        );
        assert!(auth.verified.lock().unwrap().is_empty());
        assert_eq!(check(Some(basic("prom", "right"))).await, AuthCheck::Allowed);
        assert_eq!(check(Some(basic("prom", "right"))).await, AuthCheck::Allowed);
        assert_eq!(check(Some(basic("prom", "righ"))).await, AuthCheck::Denied);
        assert_eq!(check(Some(basic("prom", "right "))).await, AuthCheck::Denied);
        assert_eq!(auth.in_check.load(Ordering::Acquire), 0, "every check counted out");
    }

    /// Past the bcrypt slots and `max_waiting` waiting checks, a check that needs bcrypt is
    /// answered Busy at once; a cached password still passes without waiting.
    #[tokio::test]
    async fn the_bcrypt_queue_is_bounded() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)])));
        assert_eq!(auth.check(Some(&basic("prom", "right")), 0).await, AuthCheck::Allowed);
        // Both bcrypt slots taken (as by two long checks): every check that needs bcrypt waits.
        let slots = auth.slot_count;
        assert!((1..=2).contains(&slots));
        let held = auth.slots.clone().acquire_many_owned(slots as u32).await.unwrap();
        let max_waiting = 3;
        let waiting: Vec<_> = (0..slots + max_waiting)
            .map(|i| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.check(Some(&basic("prom", &format!("guess{i}"))), max_waiting).await })
            })
            .collect();
        while auth.in_check.load(Ordering::Acquire) < slots + max_waiting {
            tokio::task::yield_now().await;
        }
        // The queue is full: one more is turned away at once, a cached password passes.
        assert_eq!(auth.check(Some(&basic("prom", "guess")), max_waiting).await, AuthCheck::Busy);
        assert_eq!(auth.check(Some(&basic("prom", "right")), max_waiting).await, AuthCheck::Allowed);
        drop(held);
        for w in waiting {
            assert_eq!(w.await.unwrap(), AuthCheck::Denied);
        }
        assert_eq!(auth.in_check.load(Ordering::Acquire), 0, "every check counted out");
        assert_eq!(auth.check(Some(&basic("prom", "guess")), max_waiting).await, AuthCheck::Denied);
    }

    /// A check that gets no bcrypt slot within BCRYPT_WAIT is answered Busy.
    #[tokio::test(start_paused = true)]
    async fn a_check_waits_for_a_slot_at_most_bcrypt_wait() {
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_string(), bcrypt::hash("right", 4).unwrap())]));
        let _held = auth.slots.clone().acquire_many_owned(auth.slot_count as u32).await.unwrap();
        let start = tokio::time::Instant::now();
        assert_eq!(auth.check(Some(&basic("prom", "right")), 16).await, AuthCheck::Busy);
        assert_eq!(start.elapsed(), BCRYPT_WAIT);
        assert_eq!(auth.in_check.load(Ordering::Acquire), 0);
    }

    #[test]
    fn same_bytes_compares_whole_values() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
        assert!(same_bytes(b"", b""));
    }

    #[test]
    fn loading_reports_missing_files_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("web.yml");
        std::fs::write(&cfg, "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n").unwrap();
        let e = WebRuntime::load(Some(&cfg)).err().unwrap();
        assert!(e.contains("nope.crt") && e.contains("web.yml"), "{e}");
        std::fs::write(&cfg, "").unwrap();
        let w = WebRuntime::load(Some(&cfg)).unwrap();
        assert!(w.tls.is_none() && w.auth.is_none());
        assert!(WebRuntime::load(Some(&dir.path().join("missing.yml"))).is_err());
    }
}
