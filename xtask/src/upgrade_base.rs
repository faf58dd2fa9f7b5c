//! The older `hola` that `tests/tests/upgrade.rs` upgrades from, built in
//! the background while `cargo xtask test` runs its other steps: on a new
//! machine that build takes about 12 minutes, which would otherwise add to
//! the suite's time. The build itself and the machine-wide cache are
//! `tests/src/upgrade_base.rs`'s, included here by path (std only) so that
//! xtask does not depend on the test crate.

use std::{
    fs::{File, TryLockError},
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Result, anyhow, bail};

use crate::{command, repo_root};

#[path = "../../tests/src/upgrade_base.rs"]
mod shared;

pub(crate) use shared::BACKGROUND_ENV;

/// A build running in a thread of this process, holding the cache's lock.
/// Dropped (this run ends, also on a failed step), it ends a build still
/// running (cargo's whole process group), so no build outlives the run. A
/// Ctrl-C reaches only xtask's group: the niced cargo then runs on to its
/// end without filling the cache, and the next build replaces its
/// `COMMIT.tmp/`.
pub(crate) struct Background {
    pid: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the build of the older `hola` (niced, its output to
/// `/var/cache/hola/upgrade-base/COMMIT.log`) unless it is cached or another
/// process builds it.
pub(crate) fn start() -> Result<Option<Background>> {
    let root = repo_root();
    let commit = shared::base_commit(root).map_err(|e| anyhow!(e))?;
    if let Some(bin) = shared::cached(&commit) {
        println!(
            "    the older hola for the upgrade test is cached: {}",
            bin.display()
        );
        return Ok(None);
    }
    let lock = shared::lock_file(&commit).map_err(|e| anyhow!(e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            println!(
                "    another process builds the older hola ({commit}) for the upgrade test; \
                 the test waits for it"
            );
            return Ok(None);
        }
        Err(TryLockError::Error(e)) => {
            bail!("locking the build of the older hola ({commit}): {e}")
        }
    }
    let path = shared::log_path(&commit);
    let log = File::create(&path).map_err(|e| anyhow!("creating {}: {e}", path.display()))?;
    let mut cargo = command("nice");
    cargo.args(["-n", "19", "cargo"]);
    let pid = Arc::new(AtomicU32::new(0));
    let p = pid.clone();
    let thread = std::thread::spawn(move || {
        // Held until the build ends: the test waits on it.
        let _lock = lock;
        if let Err(e) = shared::build_locked(root, &commit, cargo, Some(&log), Some(&p)) {
            let _ = writeln!(&log, "FAILED: {e}");
        }
    });
    println!(
        "    building the older hola for the upgrade test in the background (nice -n 19), log {}",
        path.display()
    );
    Ok(Some(Background {
        pid,
        thread: Some(thread),
    }))
}

/// `cargo xtask upgrade-base`: builds the older `hola` into the cache in
/// the foreground, after any build another process runs.
pub(crate) fn build_now() -> Result<()> {
    let root = repo_root();
    let commit = shared::base_commit(root).map_err(|e| anyhow!(e))?;
    let lock = shared::lock_file(&commit).map_err(|e| anyhow!(e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            println!("waiting for another process's build of the older hola ({commit})");
            lock.lock()
                .map_err(|e| anyhow!("locking the build of the older hola ({commit}): {e}"))?;
        }
        Err(TryLockError::Error(e)) => {
            bail!("locking the build of the older hola ({commit}): {e}")
        }
    }
    let bin = shared::build_locked(root, &commit, command("cargo"), None, None)
        .map_err(|e| anyhow!(e))?;
    println!("the older hola for the upgrade test: {}", bin.display());
    Ok(())
}

impl Drop for Background {
    fn drop(&mut self) {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0
            && let Ok(pgid) = i32::try_from(pid)
        {
            // SAFETY: kill(2) takes no pointers; -pgid names the process
            // group build_locked made for its cargo (cargo, rustc, build
            // scripts), still running as pid is not 0.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
