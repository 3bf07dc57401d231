//! A real HTTPS server standing in for the PVE API: TLS with its own CA and server certificate
//! (generated here with rcgen), a tiny HTTP/1.1 responder that checks the
//! `Authorization: PVEAPIToken=...` header and serves `fixtures/pve-api/<path>.json` for
//! `GET /api2/json/<path>`. Faults: every request below `/nodes/<node>/` of one node can be made
//! to answer an HTTP status or to hang until the server is dropped.
#![allow(dead_code)] // not every test uses every part

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::{
    ServerConfig, ServerConnection, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};

/// The API fixtures: `GET /api2/json/<path>` answers with `<FIXTURES>/<path>.json`.
pub const API_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/pve-api");

/// What the requests of one node get instead of their fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Status(u16),
    /// No answer until the server is dropped.
    Hang,
    /// A 200 answer larger than any client should read (9 MiB).
    Oversized,
}

/// A CA and a server certificate for `localhost` / `127.0.0.1` signed by it.
pub struct Pki {
    pub ca_pem: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Pki {
    pub fn generate(ca_name: &str) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key")).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, "pve1.lab.example");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        Pki { ca_pem: ca.pem(), cert: cert.der().clone(), key: key.serialize_der() }
    }
}

struct State {
    /// The whole expected header value: `PVEAPIToken=user@realm!tokenid=secret`.
    auth: String,
    faults: Mutex<HashMap<String, Fault>>,
    /// (path, status) of every request answered or hung.
    log: Mutex<Vec<(String, u16)>>,
    /// Set when the server is dropped: hung requests end.
    released: (Mutex<bool>, Condvar),
    stop: AtomicBool,
}

pub struct PveServer {
    pub port: u16,
    pub pki: Pki,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl PveServer {
    /// Start a server that accepts `token` (`user@realm!tokenid=secret`).
    pub fn start(token: &str) -> PveServer {
        let pki = Pki::generate("Proxmox Virtual Environment test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![pki.cert.clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone())))
            .expect("server certificate");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(State {
            auth: format!("PVEAPIToken={token}"),
            faults: Mutex::default(),
            log: Mutex::default(),
            released: (Mutex::new(false), Condvar::new()),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, config) = (st.clone(), config.clone());
                std::thread::spawn(move || serve(conn, config, &st));
            }
        });
        PveServer { port, pki, state, accept: Some(accept) }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn fault(&self, node: &str, fault: Fault) {
        self.state.faults.lock().unwrap().insert(node.to_string(), fault);
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// How many requests of `path` (`/api2/json/...`) the server saw.
    pub fn requests(&self, path: &str) -> usize {
        self.state.log.lock().unwrap().iter().filter(|(p, _)| p == path).count()
    }

    /// Every (path, status) so far.
    pub fn log(&self) -> Vec<(String, u16)> {
        self.state.log.lock().unwrap().clone()
    }
}

impl Drop for PveServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        let (lock, cv) = &self.state.released;
        *lock.lock().unwrap() = true;
        cv.notify_all();
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(conn: TcpStream, config: Arc<ServerConfig>, st: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(tls) = ServerConnection::new(config) else { return };
    let mut stream = StreamOwned::new(tls, conn);
    // The request head (a handshake a client refuses ends here, with an error).
    let mut head = Vec::new();
    {
        let mut reader = BufReader::new(&mut stream);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => head.push(line.trim_end().to_string()),
            }
        }
    }
    let mut words = head.first().map(|l| l.split(' ')).into_iter().flatten();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or("").to_string());
    let auth = head.iter().skip(1).find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.trim().eq_ignore_ascii_case("authorization").then(|| v.trim().to_string())
    });
    let (status, body) = answer(st, method, &path, auth.as_deref());
    st.log.lock().unwrap().push((path.clone(), status));
    if status == 0 {
        // Hang: hold the connection until the server is dropped.
        let (lock, cv) = &st.released;
        let mut released = lock.lock().unwrap();
        while !*released {
            released = cv.wait_timeout(released, Duration::from_secs(60)).unwrap().0;
        }
        return;
    }
    let reason = match status {
        200 => "OK",
        401 => "authentication failure",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Error",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
    let _ = stream.sock.shutdown(Shutdown::Write);
    // Drain what the client still sends (its close_notify), then close.
    let mut sink = [0u8; 512];
    let _ = stream.sock.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.sock.read(&mut sink);
}

/// (status, body) for a request; status 0: hang.
fn answer(st: &State, method: &str, path: &str, auth: Option<&str>) -> (u16, Vec<u8>) {
    if auth != Some(st.auth.as_str()) {
        return (401, b"{\"data\":null}".to_vec());
    }
    let Some(rel) = path.strip_prefix("/api2/json/") else { return (404, b"{\"data\":null}".to_vec()) };
    if method != "GET" || rel.contains("..") || rel.contains('?') {
        return (404, b"{\"data\":null}".to_vec());
    }
    if let Some((node, _)) = rel.strip_prefix("nodes/").and_then(|r| r.split_once('/')) {
        match st.faults.lock().unwrap().get(node) {
            Some(Fault::Status(code)) => {
                return (*code, format!("{{\"data\":null,\"message\":\"node {node} failed\"}}").into_bytes());
            }
            Some(Fault::Hang) => return (0, Vec::new()),
            Some(Fault::Oversized) => {
                let mut body = b"{\"data\":\"".to_vec();
                body.resize(body.len() + (9 << 20), b'a');
                body.extend_from_slice(b"\"}");
                return (200, body);
            }
            None => {}
        }
    }
    let file: PathBuf = [API_FIXTURES, &format!("{rel}.json")].iter().collect();
    match std::fs::read(&file) {
        Ok(body) => (200, body),
        Err(_) => (404, b"{\"data\":null}".to_vec()),
    }
}
