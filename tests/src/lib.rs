//! Test support: a private `redis-server` per test on its own unix socket, killable and restartable
//! for fault tests; child processes that are killed when their test ends, whose stderr can be
//! waited on line by line; the fake query service; a private PostgreSQL; and waiting for a
//! condition with a deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod cost;
pub mod fleet;
pub mod memory;
mod postgres;
pub mod prometheus;
pub mod sentinel;
pub use postgres::PostgresServer;

/// A `redis-server` owned by one test, listening only on a unix socket in its own directory (no
/// port to race for); killed when dropped.
pub struct RedisServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server and waits until it answers. Panics (failing the test) if `redis-server` is
    /// missing: a Redis test that cannot run is a failure, not a skip.
    pub fn start() -> Self {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `--appendonly yes`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new().prefix("rd").tempdir_in("/tmp").expect("tempdir for the redis socket");
        let mut server = RedisServer { dir, child: None, extra: extra.iter().map(|s| (*s).to_owned()).collect() };
        server.restart();
        server
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Kills the server (SIGKILL): everything it held in memory is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's pid, for SIGSTOP/SIGCONT.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("redis-server is running")
    }

    /// Starts the server again on the same socket (empty unless it persists to its directory).
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--save", "", "--dir"])
            .arg(self.dir.path())
            .args(if self.extra.is_empty() { vec!["--appendonly".to_owned(), "no".to_owned()] } else { self.extra.clone() })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (ops/test.sh installs it)");
        self.child = Some(child);
        let url = self.url();
        wait_until(Duration::from_secs(10), "redis-server answers PING", || {
            let answer = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
            // A server started with --requirepass answers too: it asks for the password.
            answer.is_ok() || answer.is_err_and(|e| e.code() == Some("NOAUTH"))
        });
    }

    /// A synchronous connection for test assertions.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url()).and_then(|c| c.get_connection()).expect("connect to test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now. Only for addresses that must be refused (nothing binds
/// it); a server under test binds port 0 and reports its address instead.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind a free port")
}

/// `redis-cli -p port args…` against a server on 127.0.0.1, its trimmed output; `None` if it failed.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Polls `condition` until it holds; fails the test with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    wait_until_or(timeout, condition, || format!("timed out after {timeout:?} waiting until {what}"));
}

/// Polls `condition` until it holds; after `timeout`, fails the test with what `report` says
/// (called only then, so it can gather logs and stats).
pub fn wait_until_or(timeout: Duration, condition: impl FnMut() -> bool, report: impl FnOnce() -> String) {
    if !holds_within(timeout, condition) {
        panic!("{}", report());
    }
}

/// Polls `condition` until it holds or `timeout` passes; whether it held. For clean-up code that
/// must not panic (a `Drop`).
pub fn holds_within(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_EVERY);
    }
    true
}

/// The async twin of [`wait_until`], for tests that drive async code: polls `probe` until it
/// returns `Some` (its value is returned) and fails the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    // The deadline bounds the whole wait, a probe that hangs included; the interval paces the probes.
    let poll = async {
        let mut every = tokio::time::interval(POLL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Some(value) = probe().await {
                return value;
            }
        }
    };
    match tokio::time::timeout(timeout, poll).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?} waiting until {what}"),
    }
}

/// How often [`holds_within`] and [`eventually`] ask again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// A command for a Projector binary with none of the caller's `PROJECTOR_*` variables, so a
/// test sees only the configuration it sets itself.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PROJECTOR_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Lines a child wrote to stderr, shared with the thread that reads them.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// The stderr lines of a [`Proc`], readable after it ended.
#[derive(Clone)]
pub struct ProcLog(Arc<Lines>);

impl ProcLog {
    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A child process owned by one test: killed (SIGKILL) and reaped when dropped, pass or fail.
/// Its stderr is read line by line on a thread, so a test can wait for a log line.
pub struct Proc {
    child: Option<Child>,
    stderr: Arc<Lines>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Spawns `cmd` with stderr captured (stdout as the command says, null by default).
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = Arc::new(Lines::default());
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut lines = sink.lines.lock().unwrap_or_else(|p| p.into_inner());
                lines.push(line);
                sink.grew.notify_all();
            }
        });
        Proc { child: Some(child), stderr, reader: Some(reader) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("process not yet reaped")
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// A handle on this process's stderr that outlives it, for failure reports.
    pub fn log(&self) -> ProcLog {
        ProcLog(self.stderr.clone())
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> String {
        self.stderr.lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Waits until `count` stderr lines contain every one of `needles`; returns the last such line.
    pub fn wait_for_lines(&self, needles: &[&str], count: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut lines = self.stderr.lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let matching: Vec<&String> = lines.iter().filter(|l| needles.iter().all(|n| l.contains(n))).collect();
            if matching.len() >= count {
                return matching[count - 1].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} waiting for {count} stderr line(s) with {needles:?}:\n{}",
                lines.join("\n")
            );
            lines = self.stderr.grew.wait_timeout(lines, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits for one stderr line containing every one of `needles`.
    pub fn wait_for_line(&self, needles: &[&str], timeout: Duration) -> String {
        self.wait_for_lines(needles, 1, timeout)
    }

    /// Waits for the process to exit within `timeout` (killing it if it does not) and returns its
    /// status, stdout (if piped) and stderr.
    pub fn wait_with_output(mut self, timeout: Duration) -> Output {
        let mut stdout = self.child.as_mut().expect("process not yet reaped").stdout.take();
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        });
        let (pid, lines) = (self.pid(), self.stderr.clone());
        let mut status: Option<ExitStatus> = None;
        // On timeout the panic drops `self`, which kills the process.
        wait_until_or(
            timeout,
            || {
                status = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait"));
                status.is_some()
            },
            || {
                let lines = lines.lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                format!("process {pid} did not exit within {timeout:?}; stderr:\n{lines}")
            },
        );
        self.child = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let status = status.expect("the process exited");
        Output { status, stdout: out_reader.join().unwrap_or_default(), stderr: self.stderr().into_bytes() }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `projector-fake-snuba` process owned by one test; killed when dropped.
pub struct FakeSnuba {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    scheme: &'static str,
}

impl FakeSnuba {
    /// Starts the fake with `args` (see `projector-fake-snuba --help`) on a port of its choosing.
    pub fn start(binary: &str, args: &[&str]) -> Self {
        let tls = args.contains(&"--tls-cert");
        let mut child = command(binary)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start projector-fake-snuba");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut line).expect("fake prints its address");
        let addr = line.trim().to_owned();
        assert!(!addr.is_empty(), "projector-fake-snuba printed no address");
        FakeSnuba { child, addr, scheme: if tls { "https" } else { "http" } }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// `GET /stats` (over plain HTTP only).
    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/stats", self.url())).await.expect("GET /stats").json().await.expect("stats JSON")
    }

    /// `GET /stats`, from a synchronous test.
    pub fn stats_now(&self) -> serde_json::Value {
        let url = format!("{}/stats", self.url());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async { reqwest::get(url).await.expect("GET /stats").json::<serde_json::Value>().await.expect("stats JSON") })
        })
        .join()
        .expect("stats thread")
    }
}

impl Drop for FakeSnuba {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of another workspace package (`projector-worker`, `projector-scheduler`,
/// `projectorctl`), built next to this test by `cargo build --workspace` (ops/test.sh does that first).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests live in target/<profile>/deps/, support binaries in target/<profile>/ itself.
    let mut dir = exe.parent().expect("target directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target directory");
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` first (ops/test.sh does)", path.display());
    path
}

/// The one runtime for a synchronous test that drives async code: multi-threaded, with four
/// workers whatever the machine, so tests that run many clients at once (the rate policy's)
/// behave the same on two cores as on sixteen.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime")
}

/// `GET url`, from a synchronous test: the body.
pub fn http_get(url: &str) -> String {
    let url = url.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async { reqwest::get(url).await.expect("GET").text().await.expect("body") })
    })
    .join()
    .expect("http thread")
}

/// Scrapes a Prometheus text endpoint.
pub fn scrape(addr: &str) -> String {
    http_get(&format!("http://{addr}/metrics"))
}

/// The value of one sample (`name` or `name{labels}` exactly as exposed), if present.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// Path of a file in this crate's directory (fixtures).
pub fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
