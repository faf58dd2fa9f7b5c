//! `cargo xtask setup`: checks everything that building and testing hola needs
//! and installs what is missing, one step at a time, saying what it does. Safe
//! to run again: a second run installs nothing.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo_bin, child_path, command, is_root, run_output, run_status, show};

/// Debian packages: LLVM 22 and its link dependencies to build bpf-linker;
/// the tools the privileged tests and the lab run (ip, ethtool, nft,
/// bpftool, ping, sysctl/ps, curl, bird2).
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "ethtool",
    "nftables",
    "bpftool",
    "iputils-ping",
    "procps",
    "curl",
    // the cluster lab and tests/tests/bgp.rs: BIRD 2 speaks BGP and BFD for
    // the router and each node (docs/cluster.md).
    "bird2",
    // cargo xtask bench proxy: the HTTP load generator and the HAProxy contender.
    "wrk",
    "haproxy",
    // cargo xtask bench --report: the font the plot's labels are drawn in.
    "fonts-dejavu-core",
    // cargo xtask package: systemd-analyze verifies the unit; dpkg-dev's
    // dpkg-shlibdeps gives cargo-deb the package's dependencies.
    "systemd",
    "dpkg-dev",
];

/// The nightly toolchain aya-build compiles lb-ebpf with (`rustup run nightly`).
const NIGHTLY: &str = "nightly";

/// bpf-linker releases that link against LLVM 22.
const BPF_LINKER_SERIES: &str = "0.13.";
const BPF_LINKER_REQ: &str = "^0.13";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// What this run installed (or, with `--dry-run`, would install).
struct Setup {
    dry_run: bool,
    installed: Vec<String>,
}

pub(crate) fn setup(dry_run: bool) -> Result<()> {
    let mut s = Setup {
        dry_run,
        installed: Vec::new(),
    };
    s.debian_packages()?;
    s.nightly_toolchain()?;
    s.component(
        NIGHTLY,
        "rust-src",
        "lb-ebpf is built with -Z build-std=core",
    )?;
    let active = active_toolchain()?;
    for c in ["rustfmt", "clippy"] {
        s.component(&active, c, "cargo xtask test runs it")?;
    }
    s.bpf_linker()?;
    s.cargo_deb()?;

    match (s.installed.is_empty(), dry_run) {
        (true, _) => println!("setup: nothing to install"),
        (false, false) => println!("setup: installed {}", s.installed.join(", ")),
        (false, true) => println!("setup (dry run): would install {}", s.installed.join(", ")),
    }
    Ok(())
}

impl Setup {
    fn debian_packages(&mut self) -> Result<()> {
        let mut missing = Vec::new();
        for pkg in DEBIAN_PACKAGES {
            if !dpkg_installed(pkg)? {
                missing.push(*pkg);
            }
        }
        if missing.is_empty() {
            println!("ok: debian packages {}", DEBIAN_PACKAGES.join(" "));
            return Ok(());
        }
        let list = missing.join(" ");
        println!("missing: debian packages {list}");
        if self.dry_run {
            let root = if is_root() { "" } else { " (needs root)" };
            println!("would install: apt-get update && apt-get install -y {list}{root}");
            self.installed.extend(missing.iter().map(|p| p.to_string()));
            return Ok(());
        }
        if !is_root() {
            bail!(
                "Debian packages {list} are missing and installing them needs root: run \
                 `apt-get update && apt-get install -y {list}` as root, or run cargo xtask as root"
            );
        }
        println!("installing: debian packages {list} (apt-get update, then apt-get install)");
        run_status(command("apt-get").arg("update"))
            .context("apt-get update failed (is the Debian mirror reachable?)")?;
        run_status(
            command("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y"])
                .args(&missing),
        )?;
        for pkg in &missing {
            if !dpkg_installed(pkg)? {
                bail!("apt-get install finished but Debian package {pkg} is still not installed");
            }
        }
        self.installed.extend(missing.iter().map(|p| p.to_string()));
        Ok(())
    }

    /// The nightly cannot be downloaded on these machines, so a missing one is fatal.
    fn nightly_toolchain(&mut self) -> Result<()> {
        let list = run_output(command("rustup").args(["toolchain", "list"]))?;
        match find_nightly(&list) {
            Some(name) => {
                println!("ok: nightly toolchain {name}");
                Ok(())
            }
            None => bail!(
                "no `nightly` toolchain in `rustup toolchain list` (found: {}); lb-ebpf needs it and \
                 it cannot be downloaded on this machine: install one with \
                 `rustup toolchain install nightly --component rust-src` where \
                 static.rust-lang.org is reachable",
                list.lines().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn component(&mut self, toolchain: &str, component: &str, why: &str) -> Result<()> {
        if has_component(toolchain, component)? {
            println!("ok: {toolchain} toolchain has {component}");
            return Ok(());
        }
        let mut add = command("rustup");
        add.args(["component", "add", component, "--toolchain", toolchain]);
        println!("missing: {component} for the {toolchain} toolchain ({why})");
        if self.dry_run {
            println!("would install: {}", show(&add));
        } else {
            println!("installing: {}", show(&add));
            run_status(&mut add).with_context(|| {
                format!("could not add {component} to the {toolchain} toolchain")
            })?;
            if !has_component(toolchain, component)? {
                bail!(
                    "`{}` succeeded but {component} is still not listed",
                    show(&add)
                );
            }
        }
        self.installed.push(format!("{component} ({toolchain})"));
        Ok(())
    }

    fn bpf_linker(&mut self) -> Result<()> {
        let problem = match find_program("bpf-linker") {
            None => format!(
                "not on PATH nor in {}",
                cargo_bin().map_or_else(|| "~/.cargo/bin".into(), |p| p.display().to_string())
            ),
            Some(path) => match bpf_linker_version(&path) {
                Ok(v) if v.starts_with(BPF_LINKER_SERIES) => {
                    println!("ok: bpf-linker {v} ({})", path.display());
                    return Ok(());
                }
                Ok(v) => format!("{} is version {v}", path.display()),
                Err(e) => format!("{} does not run: {e:#}", path.display()),
            },
        };
        println!("missing: bpf-linker {BPF_LINKER_REQ} ({problem})");

        let mut install = command("cargo");
        install.env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_REQ,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            "llvm-22",
        ]);
        if self.dry_run {
            println!("would install: {}", show(&install));
            self.installed.push("bpf-linker".into());
            return Ok(());
        }
        println!(
            "installing: bpf-linker {BPF_LINKER_REQ} built against LLVM 22; this compiles it \
             from crates.io and takes a few minutes: {}",
            show(&install)
        );
        run_status(&mut install).context("building bpf-linker failed")?;

        let path = find_program("bpf-linker")
            .context("cargo install finished but bpf-linker is still not found")?;
        let v = bpf_linker_version(&path)?;
        if !v.starts_with(BPF_LINKER_SERIES) {
            bail!(
                "installed bpf-linker, but the one found first on PATH is {} (version {v}); \
                 remove it so that {} is used",
                path.display(),
                cargo_bin().unwrap_or_default().join("bpf-linker").display()
            );
        }
        println!("ok: bpf-linker {v} ({})", path.display());
        self.installed.push(format!("bpf-linker {v}"));
        Ok(())
    }
}

impl Setup {
    /// cargo-deb, which `cargo xtask package` builds the Debian package with.
    fn cargo_deb(&mut self) -> Result<()> {
        let found = find_program("cargo-deb");
        if let Some(path) = &found
            && let Ok(v) = run_output(command(&path.to_string_lossy()).args(["deb", "--version"]))
        {
            println!("ok: {} ({})", v.trim(), path.display());
            return Ok(());
        }
        let mut install = command("cargo");
        install.args(["install", "cargo-deb", "--locked"]);
        println!("missing: cargo-deb (cargo xtask package builds the Debian package with it)");
        if self.dry_run {
            println!("would install: {}", show(&install));
        } else {
            println!(
                "installing: cargo-deb from crates.io; this compiles it and takes a few minutes: {}",
                show(&install)
            );
            run_status(&mut install).context("building cargo-deb failed")?;
            find_program("cargo-deb")
                .context("cargo install finished but cargo-deb is still not found")?;
        }
        self.installed.push("cargo-deb".into());
        Ok(())
    }
}

fn dpkg_installed(pkg: &str) -> Result<bool> {
    // Exit status 1 (and no output) means dpkg has never heard of the package.
    let out = command("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .context("could not run dpkg-query: setup expects a Debian system (Debian 12)")?;
    Ok(out.status.success() && dpkg_status_installed(&String::from_utf8_lossy(&out.stdout)))
}

/// The toolchain `cargo` resolves to in the workspace, e.g. `stable-x86_64-unknown-linux-gnu`.
fn active_toolchain() -> Result<String> {
    let out = run_output(command("rustup").args(["show", "active-toolchain"]))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("`rustup show active-toolchain` printed nothing useful: {out:?}"))
}

fn has_component(toolchain: &str, component: &str) -> Result<bool> {
    let out = run_output(command("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))?;
    Ok(component_listed(&out, component))
}

/// The toolchain `nightly` resolves to in `rustup toolchain list` output:
/// `nightly-<host>`, not a dated `nightly-2025-01-01-<host>`.
fn find_nightly(list: &str) -> Option<&str> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|name| {
            name.strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
}

/// Whether `rustup component list --installed` output lists `component`;
/// lines are `rust-src` or `clippy-x86_64-unknown-linux-gnu` (the name, then
/// the host triple, which starts with the architecture).
fn component_listed(list: &str, component: &str) -> bool {
    let host = format!("-{}-", std::env::consts::ARCH);
    list.lines().any(|l| {
        l.trim()
            .strip_prefix(component)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(&host))
    })
}

/// `dpkg-query -f '${Status}'` output of an installed package: "install ok
/// installed" or "hold ok installed"; "deinstall ok config-files" is not.
fn dpkg_status_installed(status: &str) -> bool {
    status.trim_end().ends_with(" installed")
}

/// The first executable `name` on the PATH children get.
fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&child_path())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `bpf-linker --version` prints `bpf-linker 0.13.0`.
fn bpf_linker_version(path: &Path) -> Result<String> {
    let out = run_output(command(&path.to_string_lossy()).arg("--version"))?;
    let out = out.trim();
    out.strip_prefix("bpf-linker ")
        .map(str::to_owned)
        .with_context(|| format!("unexpected `{} --version` output: {out:?}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_is_the_undated_one() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-2025-01-01-x86_64-unknown-linux-gnu\n\
                    nightly-x86_64-unknown-linux-gnu\n";
        assert_eq!(find_nightly(list), Some("nightly-x86_64-unknown-linux-gnu"));
        assert_eq!(
            find_nightly(
                "stable-x86_64-unknown-linux-gnu (default)\n1.95.0-x86_64-unknown-linux-gnu\n"
            ),
            None
        );
    }

    #[test]
    fn components_match_by_name_not_prefix() {
        let arch = std::env::consts::ARCH;
        let list = format!(
            "cargo-{arch}-unknown-linux-gnu\nrust-src\nrust-std-{arch}-unknown-linux-gnu\n"
        );
        let list = list.as_str();
        assert!(component_listed(list, "rust-src"));
        assert!(component_listed(list, "cargo"));
        assert!(!component_listed(list, "clippy"));
        assert!(!component_listed(list, "rust"));
    }

    #[test]
    fn dpkg_status() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(dpkg_status_installed("hold ok installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed(""));
    }
}
