//! Endpoint security with real clients: the daemon with a web config file (TLS, basic auth,
//! client certificates) against curl, and configurations it must refuse to start with.

mod ops;

use std::time::Duration;

use ops::{Exporter, Pki, bcrypt_hash, curl, plain_root};

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("web-config.yml");
    std::fs::write(&path, text).expect("write web config");
    path.to_string_lossy().into_owned()
}

#[test]
fn tls_and_basic_auth_with_curl() {
    let root = plain_root();
    let pki = Pki::new();
    // Relative file names are relative to the config file: it sits beside the certificates.
    let config = write_config(
        pki.dir.path(),
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  prometheus: {}\n  grafana: {}\n",
            bcrypt_hash("right password"),
            bcrypt_hash("other")
        ),
    );
    let e = Exporter::start(root.path(), &["--ebpf", "off", "--web.config.file", &config], &[]);
    assert!(e.logs().contains(&format!("listening on https://127.0.0.1:{}", e.port)), "{}", e.logs());
    let ca = pki.path("ca.crt");
    let metrics = e.url("https", "/metrics");

    let ok = curl(&["--cacert", &ca, "-u", "prometheus:right password", &metrics]);
    assert_eq!(ok.status, 200, "{} {}", ok.stderr, ok.body);
    assert!(ok.body.contains("pve_exporter_build_info{"), "{}", ok.body);
    assert!(ok.headers.to_ascii_lowercase().contains("x-frame-options: deny"), "{}", ok.headers);
    // Every user has their own password.
    let other = curl(&["--cacert", &ca, "-u", "grafana:other", &e.url("https", "/healthz")]);
    assert_eq!(other.status, 200, "{}", other.stderr);

    for (creds, what) in [
        (Some("prometheus:wrong"), "wrong password"),
        (Some("prometheus:right password "), "password with a trailing space"),
        (Some("nobody:right password"), "unknown user"),
        (Some("grafana:right password"), "another user's password"),
        (None, "no credentials"),
    ] {
        let mut args = vec!["--cacert", ca.as_str()];
        if let Some(c) = creds {
            args.extend(["-u", c]);
        }
        args.push(&metrics);
        let r = curl(&args);
        assert_eq!(r.status, 401, "{what}: {} {}", r.stderr, r.body);
        assert!(!r.body.contains("pve_exporter"), "{what}: metrics leaked");
        assert!(r.headers.contains("WWW-Authenticate: Basic") || r.headers.contains("www-authenticate: Basic"));
        assert!(r.headers.to_ascii_lowercase().contains("x-frame-options: deny"), "headers on 401 too");
    }
    // Every endpoint is behind the same lock.
    assert_eq!(curl(&["--cacert", &ca, &e.url("https", "/healthz")]).status, 401);
    assert_eq!(curl(&["--cacert", &ca, &e.url("https", "/")]).status, 401);

    // Plain HTTP to the TLS port: a 400 that says why, never metrics.
    let plain = curl(&["-u", "prometheus:right password", &e.url("http", "/metrics")]);
    assert_eq!(plain.status, 400, "{}", plain.stderr);
    assert!(plain.body.contains("HTTP request to an HTTPS server"), "{}", plain.body);
    // A client that checks the certificate against the system CAs refuses ours.
    let untrusted = curl(&["-u", "prometheus:right password", &metrics]);
    assert_eq!(untrusted.status, 0);
    assert_eq!(untrusted.exit, 60, "curl: peer certificate cannot be authenticated: {}", untrusted.stderr);
    // TLS 1.0/1.1 are not spoken; TLS 1.2 is.
    let old = curl(&["--cacert", &ca, "--tls-max", "1.1", "-u", "prometheus:right password", &metrics]);
    assert_eq!(old.status, 0, "TLS 1.1 must fail");
    let tls12 = curl(&["--cacert", &ca, "--tls-max", "1.2", "-u", "prometheus:right password", &metrics]);
    assert_eq!(tls12.status, 200, "{}", tls12.stderr);
}

#[test]
fn client_certificates_when_required() {
    let root = plain_root();
    let pki = Pki::new();
    let config = write_config(
        pki.dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n  \
         client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n",
    );
    let e = Exporter::start(root.path(), &["--ebpf", "off", "--web.config.file", &config], &[]);
    let (ca, metrics) = (pki.path("ca.crt"), e.url("https", "/metrics"));
    let with = |name: &str| {
        curl(&[
            "--cacert",
            &ca,
            "--cert",
            &pki.path(&format!("{name}.crt")),
            "--key",
            &pki.path(&format!("{name}.key")),
            &metrics,
        ])
    };

    let ok = with("client");
    assert_eq!(ok.status, 200, "{}", ok.stderr);
    assert!(ok.body.contains("pve_exporter_build_info"));
    let none = curl(&["--cacert", &ca, &metrics]);
    assert_eq!(none.status, 0, "no client certificate must fail the handshake: {}", none.body);
    let stranger = with("stranger");
    assert_eq!(stranger.status, 0, "a client certificate of another CA must fail: {}", stranger.body);
    // min_version TLS13.
    let tls12 = curl(&[
        "--cacert",
        &ca,
        "--tls-max",
        "1.2",
        "--cert",
        &pki.path("client.crt"),
        "--key",
        &pki.path("client.key"),
        &metrics,
    ]);
    assert_eq!(tls12.status, 0, "TLS 1.2 must fail with min_version TLS13");
}

#[test]
fn a_web_config_that_cannot_be_used_stops_the_start() {
    let root = plain_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "missing.crt"),
        ("basic_auth_users:\n  prometheus: not-a-hash\n", "not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: a.crt\n", "missing one of key or key_file"),
        ("basic_auth_user:\n  prometheus: x\n", "unknown field"),
    ];
    for (text, want) in cases {
        let config = write_config(dir.path(), text);
        let mut e = Exporter::spawn(root.path(), &["--ebpf", "off", "--web.config.file", &config], &[]);
        let st = e.wait_exit(Duration::from_secs(20));
        assert_eq!(st.code(), Some(1), "{text:?}");
        let logs = e.logs();
        assert!(logs.contains(want) && logs.contains("web-config.yml"), "{text:?}: {logs}");
        // It never listened.
        assert!(!logs.contains("listening on"), "{logs}");
    }
    let mut e = Exporter::spawn(root.path(), &["--ebpf", "off", "--web.config.file", "/nonexistent/web.yml"], &[]);
    assert_eq!(e.wait_exit(Duration::from_secs(20)).code(), Some(1));
    assert!(e.logs().contains("cannot read /nonexistent/web.yml"), "{}", e.logs());
}

#[test]
fn the_shipped_example_config_is_valid_once_a_hash_is_filled_in() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/web-config.example.yml"))
        .expect("packaging/web-config.example.yml");
    let base = std::path::Path::new("/etc/pve-exporter");
    // As shipped it must not start (a placeholder is not a password).
    assert!(pve_exporter::web::parse(&example, base).is_err());
    let placeholder =
        example.lines().find_map(|l| l.trim().strip_prefix("prometheus: ")).expect("the example has a prometheus user");
    let filled = example.replace(placeholder, &bcrypt_hash("x"));
    let config = pve_exporter::web::parse(&filled, base).expect("example with a real hash");
    let tls = config.tls.expect("the example enables TLS");
    assert_eq!(tls.cert, pve_exporter::web::Pem::File("/etc/pve-exporter/server.crt".into()));
    assert_eq!(config.users.len(), 1);
}
