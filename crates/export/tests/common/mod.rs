//! Helpers shared by the tests that call independent Python clients (`scripts/check/`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `scripts/check/SCRIPT ARGS` with the pinned test tools; its last stdout line is JSON.
pub fn python(script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> serde_json::Value {
    let tools = root().join(".cache/pytools");
    assert!(
        tools.join(".requirements").exists(),
        "run scripts/fetch-assets.sh (it installs the Python test tools into .cache/pytools)"
    );
    let out = Command::new("python3")
        .env("PYTHONPATH", &tools)
        .arg(root().join("scripts/check").join(script))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub fn write_f32(path: &Path, v: &[f32]) {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

pub fn write_i64(path: &Path, v: &[i64]) {
    std::fs::write(
        path,
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}
