//! The bootstrap: what a fresh machine lacks to build and test hola,
//! installed idempotently, each step said aloud.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{is_root, run_cmd};

/// Debian packages: LLVM 22 and its libraries to build bpf-linker; iproute2,
/// ethtool, nftables and procps for the namespace tests; bpftool to look at
/// loaded programs.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "nftables",
    "procps",
    "bpftool",
];

const BPF_LINKER_VERSION: &str = "0.13";

fn say(what: &str) {
    println!("setup: {what}");
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn package_installed(p: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs what is missing; returns how many things it installed.
pub fn setup() -> anyhow::Result<usize> {
    let mut installed = 0;

    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        say(&format!("ok: Debian packages ({})", PACKAGES.join(" ")));
    } else {
        if !is_root() {
            bail!(
                "Debian packages missing: {m}; install them as root: apt-get update && apt-get install -y {m}",
                m = missing.join(" ")
            );
        }
        say(&format!(
            "installing Debian packages: {}",
            missing.join(" ")
        ));
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        installed += missing.len();
    }

    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup not found: hola builds with rustup's stable and nightly toolchains")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly Rust toolchain (rustup toolchain list shows: {}); the eBPF programs need one: rustup toolchain install nightly",
            toolchains.lines().collect::<Vec<_>>().join(", ")
        );
    }
    say("ok: nightly toolchain");
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        say("ok: rust-src for nightly");
    } else {
        say("installing: rust-src for nightly (rustup component add rust-src --toolchain nightly)");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        installed += 1;
    }

    let linker = output(Command::new("bpf-linker").arg("--version"));
    match linker {
        Some(v)
            if v.split_whitespace()
                .nth(1)
                .is_some_and(|v| v.starts_with(BPF_LINKER_VERSION)) =>
        {
            say(&format!("ok: {}", v.trim()));
        }
        other => {
            match other {
                Some(v) => say(&format!(
                    "replacing {} with bpf-linker {BPF_LINKER_VERSION}",
                    v.trim()
                )),
                None => say("bpf-linker not found"),
            }
            say(&format!(
                "installing: bpf-linker {BPF_LINKER_VERSION} built against LLVM 22 (cargo install; about two minutes)"
            ));
            run_cmd(
                Command::new("cargo")
                    .args([
                        "install",
                        "bpf-linker",
                        "--version",
                        &format!("~{BPF_LINKER_VERSION}"),
                        "--no-default-features",
                        "--features",
                        "llvm-22",
                        "--force",
                    ])
                    .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
            )?;
            installed += 1;
        }
    }

    if installed == 0 {
        say("nothing to install");
    } else {
        say(&format!("installed {installed} item(s)"));
    }
    Ok(installed)
}
