//! The manifest tells the truth: the declared minimum Rust is what the locked
//! dependencies need, no less (a newcomer with an older toolchain must get cargo's clear
//! "requires rustc X" message, not a failure deep in a dependency's build).

use std::process::Command;

#[test]
fn rust_version_is_the_highest_any_locked_package_needs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    let (needed, by) = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] != env!("CARGO_PKG_NAME"))
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?)))
        .max()
        .unwrap();
    let ours = version(env!("CARGO_PKG_RUST_VERSION"));
    let pad = |mut v: Vec<u32>| {
        v.resize(3, 0);
        v
    };
    assert_eq!(
        pad(ours),
        pad(needed.clone()),
        "Cargo.toml's rust-version must be {needed:?}, which {by} needs"
    );
}
