//! Stamps the commit a binary was built from into `PROJECTOR_COMMIT`, for `--version`: the short
//! hash from git, or "unknown" outside a git checkout (a source archive).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PROJECTOR_COMMIT={commit}");
    // HEAD's log changes with every commit and checkout, so the stamp follows them.
    println!("cargo:rerun-if-changed=../.git/logs/HEAD");
    println!("cargo:rerun-if-changed=../.git/HEAD");
}
