//! A PostgreSQL server owned by one test: `initdb` into a temp dir, `postgres` listening only on a
//! unix socket there, shut down (immediate) when dropped.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::Proc;

/// The database superuser the tests connect as (trust auth, socket only).
const USER: &str = "projector";
const PORT: u16 = 5432;

pub struct PostgresServer {
    dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl PostgresServer {
    /// Creates a cluster and starts it. Panics (failing the test) when PostgreSQL's server
    /// binaries are missing: ops/test.sh installs Debian's `postgresql`.
    pub fn start() -> Self {
        let bin = server_bin_dir();
        let dir = tempfile::Builder::new().prefix("pg").tempdir_in("/tmp").expect("tempdir for postgres");
        let owner = run_as();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the postgres dir");
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"])
            .stdout(std::process::Stdio::null());
        let out = as_owner(&mut initdb, owner).output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-p", &PORT.to_string(), "-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"]);
        as_owner(&mut server, owner).env("LC_ALL", "C").stdout(std::process::Stdio::null());
        let proc = Proc::spawn(server);
        proc.wait_for_line(&["database system is ready to accept connections"], Duration::from_secs(60));
        PostgresServer { dir, proc: Some(proc) }
    }

    /// `postgresql://projector@<socket dir>:5432/postgres`, the socket directory percent-encoded.
    pub fn url(&self) -> String {
        let host = self.dir.path().display().to_string().replace('/', "%2F");
        format!("postgresql://{USER}@{host}:{PORT}/postgres")
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::stderr).unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            // SIGQUIT: immediate shutdown, which also removes the shared memory; Proc's own drop
            // kills whatever is left after a few seconds.
            let _ = Command::new("kill").arg("-QUIT").arg(proc.pid().to_string()).status();
            crate::holds_within(Duration::from_secs(5), || !proc.is_running());
        }
    }
}

/// initdb refuses to run as root: as root, the cluster belongs to the `postgres` user.
fn run_as() -> Option<(u32, u32)> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let entry = Command::new("getent").args(["passwd", "postgres"]).output().expect("getent passwd postgres");
    let line = String::from_utf8_lossy(&entry.stdout).to_string();
    let fields: Vec<&str> = line.trim().split(':').collect();
    assert!(fields.len() > 3, "running as root needs a `postgres` user to own the test cluster (Debian's postgresql package adds one)");
    Some((fields[2].parse().expect("uid"), fields[3].parse().expect("gid")))
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    cmd
}

/// The directory of `initdb` and `postgres`: the one `pg_config --bindir` names, else the newest
/// of Debian's /usr/lib/postgresql/<version>/bin.
fn server_bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("postgres").exists() {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_string_lossy().parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL's server (initdb, postgres) must be installed: ops/test.sh installs Debian's postgresql")
}
