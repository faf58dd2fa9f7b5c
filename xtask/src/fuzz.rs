//! `cargo xtask fuzz`: packet fuzzing through the kernel
//! (`tests/tests/fuzz.rs`) with many more cases than `cargo xtask test`
//! gives it. The test prints its own progress and a verdict summary.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{command, is_root, run_status, show, toolchain};

/// Cases of a `cargo xtask fuzz` run (`cargo xtask test` runs the test's
/// own default, a few thousand).
pub(crate) const DEFAULT_CASES: u32 = 100_000;

pub(crate) fn fuzz(cases: u32) -> Result<()> {
    // Fail before a long build rather than after it.
    if !is_root() {
        bail!(
            "cargo xtask fuzz runs the balancer through BPF_PROG_TEST_RUN, which needs root; \
             run it as root, e.g. `sudo env \"PATH=$PATH\" cargo xtask fuzz`"
        );
    }
    if cases == 0 {
        bail!("--cases 0 would test nothing; give at least 1 (default {DEFAULT_CASES})");
    }
    toolchain::setup(false).context("step `setup` failed")?;
    let mut cmd = command("cargo");
    cmd.args([
        "test",
        "-p",
        "hola-tests",
        "--test",
        "fuzz",
        "--",
        "--test-threads=1",
        "--nocapture",
    ])
    .env("HOLA_FUZZ_CASES", cases.to_string());
    println!("==> fuzz: {cases} cases: {}", show(&cmd));
    let started = Instant::now();
    run_status(&mut cmd).context(
        "fuzzing found a failure: its frame is now a row of tests/fuzz-regressions/packets.txt \
         (and its seed in seeds.txt), replayed first by every later run; commit them with the fix",
    )?;
    println!(
        "==> fuzz: {cases} cases passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
