//! Which part of a run sends which Redis commands: a `MONITOR` capture of a private redis-server,
//! each command charged to the script (or the direct command) that sent it. `MONITOR` prints a
//! script call before the commands the script runs (`[0 lua]`), and scripts run whole, so a
//! script's commands are the `lua` lines that follow its call.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One sender of commands: a script (named after its file) or a command sent directly.
#[derive(Debug, Default, Clone)]
pub struct Part {
    /// Times the script was called, or the direct command was sent.
    pub calls: u64,
    /// Commands the script ran, by name.
    pub inner: BTreeMap<String, u64>,
}

impl Part {
    pub fn inner_total(&self) -> u64 {
        self.inner.values().sum()
    }
}

/// A running `redis-cli monitor` writing to a file.
pub struct Capture {
    child: Child,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    /// Starts capturing every command the server at `socket` executes.
    pub fn start(socket: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("monitor.txt");
        let child = Command::new("redis-cli")
            .arg("-s")
            .arg(socket)
            .arg("monitor")
            .stdout(std::fs::File::create(&path)?)
            .stderr(Stdio::null())
            .spawn()?;
        let capture = Capture { child, path, _dir: dir };
        // MONITOR answers +OK once it is subscribed: wait for it so no command is missed.
        crate::wait_until(std::time::Duration::from_secs(10), "redis-cli monitor is subscribed", || {
            std::fs::read_to_string(&capture.path).is_ok_and(|s| s.starts_with("OK"))
        });
        Ok(capture)
    }

    /// Stops the capture and charges every command to its sender.
    pub fn finish(mut self) -> anyhow::Result<BTreeMap<String, Part>> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.path)?;
        Ok(attribute(&text, &script_names()))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SHA1 → name of every script Projector and apalis-redis load, built the way each crate builds
/// it: ours through the script registry (includes expanded), apalis-redis's as they are.
pub fn script_names() -> HashMap<String, String> {
    let ours = crate::manifest_path("../lua");
    let mut names = HashMap::new();
    for (dir, label) in [(Some(ours.clone()), ""), (apalis_redis_lua(), "apalis ")] {
        let Some(dir) = dir else { continue };
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let (Some(stem), Ok(body)) = (path.file_stem().and_then(|s| s.to_str()), std::fs::read_to_string(&path)) else {
                continue;
            };
            let name = format!("{label}{stem}");
            let built = if label.is_empty() { projector_shared::lua::script(&body) } else { redis::Script::new(&body) };
            names.insert(built.get_hash().to_owned(), name);
        }
    }
    names
}

/// apalis-redis's `lua/` directory in cargo's registry, if it can be found.
fn apalis_redis_lua() -> Option<PathBuf> {
    let home =
        std::env::var_os("CARGO_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let registries = std::fs::read_dir(home.join("registry/src")).ok()?;
    registries.flatten().map(|r| r.path().join(format!("apalis-redis-{}/lua", apalis_redis_version()))).find(|p| p.is_dir())
}

/// The apalis-redis version in the workspace's lock file.
fn apalis_redis_version() -> String {
    let lock = std::fs::read_to_string(crate::manifest_path("../Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"apalis-redis\""
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return v.trim_end_matches('"').to_owned();
        }
    }
    String::new()
}

/// Charges each line of a `MONITOR` capture to its sender.
pub fn attribute(monitor: &str, names: &HashMap<String, String>) -> BTreeMap<String, Part> {
    let mut parts: BTreeMap<String, Part> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in monitor.lines() {
        // `<time> [<db> <client>] "<command>" "<arg>" ...`
        let Some((client, args)) = line.split_once(" [").and_then(|(_, rest)| rest.split_once("] ")) else { continue };
        let mut words = args.split("\" \"").map(|w| w.trim_matches('"'));
        let command = words.next().unwrap_or_default().to_ascii_lowercase();
        if client.ends_with(" lua") {
            if let Some(owner) = &current {
                *parts.entry(owner.clone()).or_default().inner.entry(command).or_default() += 1;
            }
            continue;
        }
        let owner = match command.as_str() {
            "evalsha" | "evalsha_ro" => {
                let sha = words.next().unwrap_or_default();
                names.get(sha).cloned().unwrap_or_else(|| format!("script {}", &sha[..sha.len().min(8)]))
            }
            "eval" | "eval_ro" => "eval (source sent)".to_owned(),
            _ => command,
        };
        parts.entry(owner.clone()).or_default().calls += 1;
        current = Some(owner);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_commands_are_charged_to_the_call_before_them() {
        let names = HashMap::from([("abc".to_owned(), "slots_acquire".to_owned())]);
        let monitor = "OK\n\
            1.0 [0 unix:/tmp/r.sock] \"evalsha\" \"abc\" \"9\" \"k\"\n\
            1.1 [0 lua] \"zcard\" \"k\"\n\
            1.2 [0 lua] \"pexpire\" \"k\" \"10\"\n\
            1.3 [0 unix:/tmp/r.sock] \"PUBLISH\" \"c\" \"x\"\n\
            1.4 [0 unix:/tmp/r.sock] \"evalsha\" \"abc\" \"9\"\n\
            1.5 [0 lua] \"zcard\" \"k\"\n";
        let parts = attribute(monitor, &names);
        let acquire = &parts["slots_acquire"];
        assert_eq!(acquire.calls, 2);
        assert_eq!(acquire.inner["zcard"], 2);
        assert_eq!(acquire.inner["pexpire"], 1);
        assert_eq!(parts["publish"].calls, 1);
        assert_eq!(parts["publish"].inner_total(), 0);
    }

    #[test]
    fn every_lua_file_of_ours_has_a_name() {
        let names = script_names();
        let acquire = std::fs::read_to_string(crate::manifest_path("../lua/slots_acquire.lua")).expect("lua/slots_acquire.lua is readable");
        let sha = projector_shared::lua::script(&acquire).get_hash().to_owned();
        assert_eq!(names.get(&sha).map(String::as_str), Some("slots_acquire"));
    }
}
