//! A real Prometheus owned by one test: it scrapes the given targets every second and evaluates
//! the repository's alert rules (`ops/alerts.yml`) every second, so a test can ask which alerts
//! went pending or fired under a real load, not under series written by hand.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::{Proc, free_port, http_get, wait_until};

/// A `prometheus` process on a free port with its own data directory; killed when dropped.
pub struct Prometheus {
    _proc: Proc,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Prometheus {
    /// Scrapes `targets` (`host:port` of /metrics) and evaluates `rules` (a rule file's path).
    pub fn start(targets: &[String], rules: &Path) -> Self {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let list = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: projector\n    static_configs: [{{targets: [{list}]}}]\n",
            rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let mut cmd = std::process::Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null());
        let proc = Proc::spawn(cmd);
        let prometheus = Prometheus { _proc: proc, _dir: dir, port };
        wait_until(Duration::from_secs(30), "prometheus is ready", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && http_get(&prometheus.url("/-/ready")).contains("Ready")
        });
        prometheus
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The result vector of an instant query (PromQL), as JSON.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = http_get(&self.url(&format!("/api/v1/query?query={encoded}")));
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("prometheus reply ({e}): {body}"));
        assert_eq!(reply["status"], "success", "{promql}: {reply}");
        reply["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts (pending or firing) Prometheus holds now.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let body = http_get(&self.url("/api/v1/alerts"));
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("prometheus alerts ({e}): {body}"));
        reply["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }
}
