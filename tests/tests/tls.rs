//! TLS end to end: a real `redis-server --tls-port` and the fake query service over HTTPS, both
//! with certificates made by the test, reached by the worker, the scheduler and projectorctl
//! through `rediss://` + `redis.tls_ca_file` (or `redis.tls_insecure`) and an `https://` query.url.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use projector_tests::{FakeSnuba, Proc, command, free_port, workspace_bin};

const FAKE: &str = env!("CARGO_BIN_EXE_projector-fake-snuba");

/// A CA and a server certificate for 127.0.0.1 and localhost, signed by it, as PEM files.
struct Certs {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "projector test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("server params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    Certs { ca: write("ca.pem", ca.pem()), cert: write("cert.pem", cert.pem()), key: write("key.pem", key.serialize_pem()), _dir: dir }
}

/// `redis-server` with TLS only, on a port it could bind (retried when another process took it
/// between choosing and binding); killed when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(certs: &Certs) -> Self {
        for _ in 0..10 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--tls-cert-file")
                .arg(&certs.cert)
                .arg("--tls-key-file")
                .arg(&certs.key)
                .arg("--tls-ca-cert-file")
                .arg(&certs.ca)
                .args(["--tls-auth-clients", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (ops/test.sh installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break; // port taken: try another
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return TlsRedis { child, port };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server with TLS did not start on any of 10 ports");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(env: &[(&str, String)], args: &[&str]) -> std::process::Output {
    command(workspace_bin("projectorctl")).args(args).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output().expect("projectorctl")
}

fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn redis_over_tls_with_a_ca_file_or_insecure_and_refused_otherwise() {
    let certs = certs();
    let redis = TlsRedis::start(&certs);
    let with_ca = [("PROJECTOR_REDIS_URL", redis.url()), ("PROJECTOR_REDIS_TLS_CA_FILE", path(&certs.ca))];
    let set = ctl(&with_ca, &["slots", "set-limit", "7"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let shown = ctl(&with_ca, &["slots", "inspect"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("limit: 7 (stored in Redis"), "{}", String::from_utf8_lossy(&shown.stdout));

    let insecure = ctl(&[("PROJECTOR_REDIS_URL", redis.url()), ("PROJECTOR_REDIS_TLS_INSECURE", "true".into())], &["slots", "inspect"]);
    assert!(insecure.status.success(), "{}", String::from_utf8_lossy(&insecure.stderr));
    let fragment = ctl(&[("PROJECTOR_REDIS_URL", format!("{}/#insecure", redis.url()))], &["slots", "inspect"]);
    assert!(fragment.status.success(), "redis-rs's own #insecure form: {}", String::from_utf8_lossy(&fragment.stderr));

    // A certificate nobody vouches for is refused.
    let untrusted = ctl(&[("PROJECTOR_REDIS_URL", redis.url())], &["slots", "inspect"]);
    assert_eq!(untrusted.status.code(), Some(1), "{}", String::from_utf8_lossy(&untrusted.stdout));
}

#[test]
fn a_whole_run_over_tls_redis_and_an_https_query_service() {
    let certs = certs();
    let redis = TlsRedis::start(&certs);
    let fake = FakeSnuba::start(FAKE, &["--latency", "5ms", "--tls-cert", &path(&certs.cert), "--tls-key", &path(&certs.key)]);
    assert!(fake.url().starts_with("https://"));
    let env = [
        ("PROJECTOR_REDIS_URL", redis.url()),
        ("PROJECTOR_REDIS_TLS_CA_FILE", path(&certs.ca)),
        ("PROJECTOR_QUERY_SOURCE", "snuba".to_owned()),
        ("PROJECTOR_QUERY_URL", fake.url()),
        ("PROJECTOR_QUERY_TLS_CA_FILE", path(&certs.ca)),
        ("PROJECTOR_WORKER_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    let mut worker = command(workspace_bin("projector-worker"));
    worker.arg("run").envs(env.iter().map(|(k, v)| (*k, v.as_str()))).stdout(Stdio::null());
    let worker = Proc::spawn(worker);
    worker.wait_for_line(&["worker started", "rediss://127.0.0.1"], Duration::from_secs(30));
    let out = command(workspace_bin("projector-scheduler"))
        .args(["run-once", "--wait", "--wait-timeout", "60s", "--orgs", "5", "--batch-delay", "0s"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("scheduler");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}\nworker: {}", String::from_utf8_lossy(&out.stderr), worker.stderr());
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("completed") && l.trim_end().ends_with(" 5")), "{stdout}");
}
