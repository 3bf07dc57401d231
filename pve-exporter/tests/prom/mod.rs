//! A real Prometheus (Debian's package) for the tests: started on a free port with its own
//! data directory and configuration, asked through its HTTP API.

#![allow(dead_code)] // each test crate uses its own part of the helpers

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::ops;

/// A Prometheus server on a free port with its own data directory.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(config: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let port = ops::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package prometheus)");
        let mut p = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ops::curl(&[&format!("http://127.0.0.1:{port}/-/ready")]).status == 200 {
                return p;
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited: {st}\n{}", p.log());
            }
            assert!(Instant::now() < deadline, "prometheus not ready:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    pub fn api(&self, path: &str, query: Option<&str>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let q = query.map(|q| format!("query={q}"));
        let mut args = vec!["-G", url.as_str()];
        if let Some(q) = &q {
            args.extend(["--data-urlencode", q.as_str()]);
        }
        let r = ops::curl(&args);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path} {query:?}: {e}: {} {}", r.status, r.body))
    }

    /// The scrape targets as Prometheus sees them (for messages).
    pub fn targets(&self) -> String {
        ops::curl(&[&format!("http://127.0.0.1:{}/api/v1/targets", self.port)]).body
    }

    /// An instant query: its result vector; panics on a query error.
    pub fn query(&self, q: &str) -> Vec<Value> {
        let v = self.api("/api/v1/query", Some(q));
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Wait until `q` returns a non-empty result for which `ok` holds.
    pub fn wait_for(&self, q: &str, ok: impl Fn(&[Value]) -> bool, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.query(q);
            if !r.is_empty() && ok(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "{q} did not hold within {limit:?}: {r:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}
