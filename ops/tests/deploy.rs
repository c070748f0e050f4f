//! The deploy files are valid and match the binaries: systemd units pass `systemd-analyze
//! verify`, Kubernetes YAML parses and probes the right endpoints, every flag a deploy file
//! passes exists on that command, and the image they run is the one ops/deploy/Dockerfile builds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The directory of the workspace's binaries (projectorctl is this package's; the others are
/// built beside it by `cargo build --workspace`, which ops/test.sh runs first).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_projectorctl")).parent().expect("target dir").to_owned()
}

/// Every `--flag` of a command line exists in `<binary> <subcommand> --help`.
fn assert_flags_exist(origin: &str, words: &[&str]) {
    let binary = words[0].rsplit('/').next().expect("binary name");
    let subcommand = words[1];
    let help = Command::new(bin_dir().join(binary)).args([subcommand, "--help"]).output().expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        let flag = flag.split('=').next().unwrap_or(flag);
        assert!(help.contains(flag), "{origin}: `{binary} {subcommand}` has no {flag}:\n{help}");
    }
}

#[test]
fn systemd_units_verify_and_use_real_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (file, instance) in
        [("projector-worker@.service", "projector-worker@9464.service"), ("projector-scheduler.service", "projector-scheduler.service")]
    {
        let text = read(file);
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
        assert_flags_exist(file, &exec.split_whitespace().collect::<Vec<_>>());
        // verify checks that ExecStart is executable: point it at the binaries just built.
        let local = text.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
        let path = dir.path().join(instance);
        std::fs::write(&path, local).expect("write unit");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze must be installed (Debian package systemd; ops/test.sh installs it)");
        assert!(out.status.success(), "{file}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains(&instance.to_string()), "{file}: systemd-analyze complained: {stderr}");
    }
    let worker = read("projector-worker@.service");
    assert!(worker.contains("--metrics-addr 0.0.0.0:%i"), "the instance name is the metrics port, valid for any port");
}

#[test]
fn kubernetes_files_parse_probe_the_right_endpoints_and_run_the_built_image() {
    let dockerfile = read("Dockerfile");
    let tag =
        dockerfile.lines().find_map(|l| l.split("-t ").nth(1)).and_then(|t| t.split_whitespace().next()).expect("build command with -t");
    for file in ["cronjob.yaml", "worker-deployment.yaml"] {
        let doc: serde_yaml::Value = serde_yaml::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let spec = if doc["kind"] == "CronJob" {
            &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        } else {
            &doc["spec"]["template"]["spec"]
        };
        let container = &spec["containers"][0];
        assert_eq!(container["image"].as_str(), Some(tag), "{file} runs the image the Dockerfile builds");
        let command: Vec<String> = if doc["kind"] == "CronJob" {
            container["args"][0].as_str().expect("args").split_whitespace().skip(1).map(str::to_owned).collect()
        } else {
            container["command"].as_sequence().expect("command").iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        };
        let words: Vec<&str> = command.iter().map(String::as_str).collect();
        assert_flags_exist(file, &words);
        if doc["kind"] == "Deployment" {
            assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
            assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
        }
    }
    for file in ["../alerts.yml", "../alerts.test.yml"] {
        serde_yaml::from_str::<serde_yaml::Value>(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}
