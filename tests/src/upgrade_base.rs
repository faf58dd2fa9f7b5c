//! The `hola` of an older commit (`tests/upgrade-base.txt`) that
//! `tests/tests/upgrade.rs` upgrades from, built once per machine and
//! cached outside any clone, in `/var/cache/hola/upgrade-base/COMMIT/`
//! (`hola` and a `done` marker). A build runs under `COMMIT.lock` (so two
//! runs never build at once and a waiter can see one running), in
//! `COMMIT.tmp/` (its own source tree from `git archive` and its own target
//! directory), and is renamed into place only when the binary is there, so
//! a killed build never leaves a half cache. Only the binary is kept.
//!
//! Std only: `cargo xtask test` includes this file by path (to start the
//! build in the background at its start) without depending on this crate.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Instant,
};

/// Set by `cargo xtask test` when it started the build in the background:
/// then a missing cache once the lock is free is that build's failure
/// (reported with its log), not a reason to build again.
pub const BACKGROUND_ENV: &str = "HOLA_UPGRADE_BASE_BACKGROUND";

/// The machine-wide cache of older builds.
pub const CACHE: &str = "/var/cache/hola/upgrade-base";

/// The commit named in `tests/upgrade-base.txt` of the clone at `root`.
pub fn base_commit(root: &Path) -> Result<String, String> {
    let path = root.join("tests/upgrade-base.txt");
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    text.lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .ok_or_else(|| format!("{} names no commit", path.display()))
}

/// `CACHE/COMMIT`: the finished build (`hola`, `done`).
pub fn dir(commit: &str) -> PathBuf {
    Path::new(CACHE).join(commit)
}

/// `CACHE/COMMIT.log`: the output of a build `cargo xtask test` started.
pub fn log_path(commit: &str) -> PathBuf {
    Path::new(CACHE).join(format!("{commit}.log"))
}

/// The cached binary, if a build of `commit` completed.
pub fn cached(commit: &str) -> Option<PathBuf> {
    let d = dir(commit);
    (d.join("done").is_file() && d.join("hola").is_file()).then(|| d.join("hola"))
}

/// The lock file of `commit`'s build (opened, not locked: the caller
/// locks it with `File::lock` or `File::try_lock`; closing unlocks).
pub fn lock_file(commit: &str) -> Result<File, String> {
    std::fs::create_dir_all(CACHE).map_err(|e| format!("creating {CACHE}: {e}"))?;
    let path = Path::new(CACHE).join(format!("{commit}.lock"));
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

/// Builds the `hola` of `commit` from the git history of the clone at
/// `root` into the cache; the caller holds the lock of [`lock_file`].
/// `cargo` is the command to run cargo with (e.g. `nice -n 19 cargo`);
/// `log`, if given, takes every output (otherwise it is inherited). With
/// `group`, cargo runs in a process group of its own whose id is kept there
/// (0 when none runs), so that a caller can end the whole build; without,
/// it stays in the caller's, where a Ctrl-C reaches it. Returns the cached
/// binary.
pub fn build_locked(
    root: &Path,
    commit: &str,
    cargo: Command,
    log: Option<&File>,
    group: Option<&AtomicU32>,
) -> Result<PathBuf, String> {
    if let Some(bin) = cached(commit) {
        return Ok(bin);
    }
    let built = build_in_tmp(root, commit, cargo, log, group);
    if built.is_err() {
        // A failed build's target directory is gigabytes; its log says why.
        let _ = std::fs::remove_dir_all(Path::new(CACHE).join(format!("{commit}.tmp")));
    }
    built
}

/// [`build_locked`] once the cache is known to lack the build.
fn build_in_tmp(
    root: &Path,
    commit: &str,
    mut cargo: Command,
    log: Option<&File>,
    group: Option<&AtomicU32>,
) -> Result<PathBuf, String> {
    let t = Instant::now();
    let out = || -> Result<Stdio, String> {
        match log {
            Some(f) => f
                .try_clone()
                .map(Stdio::from)
                .map_err(|e| format!("the build log: {e}")),
            None => Ok(Stdio::inherit()),
        }
    };
    let say = |line: &str| match log {
        Some(mut f) => {
            let _ = writeln!(f, "{line}");
        }
        // Not println!: under libtest that is captured, and a person
        // watching a build of minutes should see it start.
        None => {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    };
    // Left by a killed build: no one else builds while we hold the lock.
    let tmp = Path::new(CACHE).join(format!("{commit}.tmp"));
    let rm = |p: &Path| match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("removing {}: {e}", p.display()))
        }
        _ => Ok(()),
    };
    rm(&tmp)?;
    let src = tmp.join("src");
    std::fs::create_dir_all(&src).map_err(|e| format!("creating {}: {e}", src.display()))?;
    say(&format!(
        "building the hola of {commit} from {} into {} (a whole debug build, eBPF included: minutes)",
        root.display(),
        tmp.display()
    ));
    let tar = tmp.join("src.tar");
    let status = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["archive", "--format=tar", "-o"])
        .arg(&tar)
        .arg(commit)
        .stdout(out()?)
        .stderr(out()?)
        .status()
        .map_err(|e| format!("running git archive: {e}"))?;
    if !status.success() {
        return Err(format!(
            "git archive {commit} in {} failed ({status}): the upgrade test needs the commit of \
             tests/upgrade-base.txt in the clone's history (a shallow clone lacks it: \
             `git fetch --unshallow`)",
            root.display()
        ));
    }
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .stderr(out()?)
        .status()
        .map_err(|e| format!("running tar: {e}"))?;
    if !status.success() {
        return Err(format!("unpacking {} failed ({status})", tar.display()));
    }
    let _ = std::fs::remove_file(&tar);
    let target = tmp.join("target");
    cargo
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        // No debug info: a shorter build.
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .args(["build", "--locked", "-p", "lb-userspace", "--bin", "hola"])
        .stdout(out()?)
        .stderr(out()?);
    if group.is_some() {
        std::os::unix::process::CommandExt::process_group(&mut cargo, 0);
    }
    let mut child = cargo
        .spawn()
        .map_err(|e| format!("starting cargo build for the older hola: {e}"))?;
    if let Some(g) = group {
        g.store(child.id(), Ordering::SeqCst);
    }
    let status = child.wait();
    if let Some(g) = group {
        g.store(0, Ordering::SeqCst);
    }
    let status = status.map_err(|e| format!("waiting for cargo build: {e}"))?;
    let built = target.join("debug/hola");
    if !status.success() || !built.is_file() {
        return Err(format!(
            "cargo build of the hola of {commit} in {} failed ({status})",
            src.display()
        ));
    }
    std::fs::rename(&built, tmp.join("hola"))
        .map_err(|e| format!("moving {} out: {e}", built.display()))?;
    // Only the binary stays: the target directory is gigabytes.
    rm(&target)?;
    rm(&src)?;
    std::fs::write(
        tmp.join("done"),
        format!("{commit}\nbuilt in {:?}\n", t.elapsed()),
    )
    .map_err(|e| format!("writing the marker in {}: {e}", tmp.display()))?;
    let d = dir(commit);
    rm(&d)?;
    std::fs::rename(&tmp, &d)
        .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), d.display()))?;
    say(&format!(
        "built the hola of {commit} in {:?}: {}",
        t.elapsed(),
        d.join("hola").display()
    ));
    Ok(d.join("hola"))
}
