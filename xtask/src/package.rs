//! `cargo xtask package`: the Debian package of hola (cargo-deb, from the
//! release binary): `hola`, its systemd unit, a commented
//! /etc/hola/hola.toml, a man page per command and shell completions,
//! which `hola generate` writes. [`check`] is what `cargo xtask test` asks
//! of it: the files listed by `dpkg-deb -c`, the unit accepted by
//! `systemd-analyze verify`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::{command, repo_root, run_output, run_status, show};

/// Where `hola generate` writes for the package, under the profile's
/// directory (the assets in lb-userspace/Cargo.toml name
/// target/release/package; cargo-deb reads `target/release/` as the
/// directory of the profile it is given).
const GENERATED: &str = "package";
/// Where the .deb goes.
const OUT: &str = "target/debian";
/// The unit inside the package.
const UNIT: &str = "lib/systemd/system/hola.service";

/// Paths `dpkg-deb -c` must list (man pages may be gzipped).
const EXPECTED: &[&str] = &[
    "usr/bin/hola",
    UNIT,
    "etc/hola/hola.toml",
    "usr/share/man/man1/hola.1",
    "usr/share/man/man1/hola-run.1",
    "usr/share/man/man1/hola-doctor.1",
    "usr/share/man/man1/hola-top.1",
    "usr/share/man/man1/hola-trace.1",
    "usr/share/man/man1/hola-vip-add.1",
    "usr/share/bash-completion/completions/hola",
    "usr/share/zsh/vendor-completions/_hola",
    "usr/share/fish/vendor_completions.d/hola.fish",
    "usr/share/doc/hola/README.md",
];

/// The directory under target/ of a cargo profile's output.
fn profile_dir(profile: &str) -> &str {
    if profile == "dev" { "debug" } else { profile }
}

/// Builds the package from `profile`'s binary ("release" for a package to
/// ship; `cargo xtask test` checks one made from the "dev" build it has
/// already, which holds the same files and unit, and spares CI a second,
/// optimised build of every dependency); returns the .deb's path.
pub(crate) fn package(profile: &str) -> Result<PathBuf> {
    let root = repo_root();
    let bin_dir = root.join("target").join(profile_dir(profile));
    // Cargo rebuilds only what changed: nothing when the binary is current.
    run_status(command("cargo").args([
        "build",
        "--profile",
        profile,
        "-p",
        "lb-userspace",
        "--bin",
        "hola",
    ]))
    .with_context(|| format!("building hola with the {profile} profile"))?;
    let generated = bin_dir.join(GENERATED);
    let _ = std::fs::remove_dir_all(&generated);
    run_status(
        command(&bin_dir.join("hola").to_string_lossy())
            .arg("generate")
            .arg("--out")
            .arg(&generated),
    )
    .context("writing the man pages and completions")?;
    let out_dir = root.join(OUT);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // --no-build: the binary built above, not cargo-deb's own build.
    let mut deb = command("cargo");
    deb.args([
        "deb",
        "-p",
        "lb-userspace",
        "--no-build",
        "--profile",
        profile,
    ])
    .arg("--output")
    .arg(&out_dir);
    let printed = run_output(&mut deb).with_context(|| {
        format!(
            "`{}` failed; `cargo xtask setup` installs cargo-deb",
            show(&deb)
        )
    })?;
    // cargo-deb prints the package's path as its last line.
    let path = printed
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb printed no .deb path: {printed:?}"))?;
    println!("package: {}", path.display());
    Ok(path)
}

/// The paths in `dpkg-deb -c` output (its last column), without "./".
fn listed(contents: &str) -> Vec<&str> {
    contents
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./"))
        .collect()
}

/// The expected paths `contents` lacks (a man page may be `NAME.gz`).
fn missing(contents: &str) -> Vec<&'static str> {
    let files = listed(contents);
    EXPECTED
        .iter()
        .copied()
        .filter(|want| {
            !files
                .iter()
                .any(|f| f == want || f.strip_suffix(".gz") == Some(want))
        })
        .collect()
}

/// Where Debian keeps the system's units, and the program the unit's
/// ExecReload runs (procps, which the package depends on).
const SYSTEM_UNITS: &str = "/usr/lib/systemd/system";
const KILL: &str = "/bin/kill";

/// `dpkg-deb -c` lists every expected file; `systemd-analyze verify`
/// accepts the unit in a root made of the unpacked package, this system's
/// units (the targets it is ordered against) and `/bin/kill`: what the
/// unit sees once installed. Any warning it prints counts as a refusal
/// (it exits 0 on unknown keys). Man pages are checked by the listing,
/// not by `--man` (which asks the host's `man`, outside the root).
pub(crate) fn check(deb: &Path) -> Result<()> {
    let contents = run_output(command("dpkg-deb").arg("-c").arg(deb))?;
    let lacking = missing(&contents);
    if !lacking.is_empty() {
        bail!(
            "{} lacks {}; it holds:\n{contents}",
            deb.display(),
            lacking.join(", ")
        );
    }
    println!(
        "ok: dpkg-deb -c {} lists {} files, every expected one",
        deb.display(),
        listed(&contents).len()
    );
    let root = repo_root().join(OUT).join("root");
    let _ = std::fs::remove_dir_all(&root);
    run_status(command("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    let units = root.join(SYSTEM_UNITS.trim_start_matches('/'));
    std::fs::create_dir_all(&units).with_context(|| format!("creating {}", units.display()))?;
    run_status(
        command("cp")
            .arg("-a")
            .arg(format!("{SYSTEM_UNITS}/."))
            .arg(&units),
    )?;
    let kill = root.join(KILL.trim_start_matches('/'));
    std::fs::create_dir_all(kill.parent().expect("/bin/kill has a parent"))?;
    std::fs::copy(KILL, &kill).with_context(|| format!("copying {KILL}"))?;
    let unit = root.join(UNIT);
    let mut verify = command("systemd-analyze");
    verify
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg(&unit);
    let out = verify
        .output()
        .with_context(|| format!("running `{}`", show(&verify)))?;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&root);
    if !out.status.success() || !said.trim().is_empty() {
        bail!(
            "`{}` did not accept the unit ({}): {said}",
            show(&verify),
            out.status
        );
    }
    println!("ok: systemd-analyze verify accepts {UNIT}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_listings_are_read_by_their_last_column() {
        let mut c = String::new();
        for f in EXPECTED {
            c += &format!("-rw-r--r-- root/root 100 2026-01-01 00:00 ./{f}\n");
        }
        assert_eq!(missing(&c), Vec::<&str>::new());
        let c = c.replace("hola-top.1\n", "hola-top.1.gz\n");
        assert_eq!(missing(&c), Vec::<&str>::new());
        let c = c.replace("./usr/bin/hola\n", "./usr/bin/other\n");
        assert_eq!(missing(&c), vec!["usr/bin/hola"]);
    }
}
