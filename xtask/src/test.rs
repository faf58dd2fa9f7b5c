//! `cargo xtask test`: every check CI runs, in order, stopping at the first
//! failure. The privileged tests run last so that the output ends with their
//! `test result:` lines, which CI reads.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{command, is_root, run_status, show, toolchain};

pub(crate) fn test(extra: &[String]) -> Result<()> {
    // Fail before a long build rather than after it.
    if !is_root() {
        bail!(
            "cargo xtask test runs the privileged tests (hola-tests: XDP programs through \
             BPF_PROG_TEST_RUN, network namespaces), which need root; run it as root, e.g. \
             `sudo env \"PATH=$PATH\" cargo xtask test`"
        );
    }

    let cargo = |args: &[&str]| {
        let mut c = command("cargo");
        c.args(args);
        c
    };
    let mut privileged = cargo(&["test", "-p", "hola-tests", "--", "--test-threads=1"]);
    privileged.args(extra);

    let mut steps: Vec<(&str, Command)> = vec![
        ("format", cargo(&["fmt", "--all", "--check"])),
        (
            "clippy",
            // The default members: lb-ebpf builds only for the BPF target
            // (lb-userspace/build.rs compiles it, with warnings shown).
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]),
        ),
        // lb-ebpf's binaries only link for bpfel-unknown-none (no host
        // `main`); clippy checks its code and the fixtures load its object.
        (
            "unit tests",
            cargo(&[
                "test",
                "--workspace",
                "--exclude",
                "hola-tests",
                "--exclude",
                "lb-ebpf",
            ]),
        ),
        // docs/benchmarks.md: the bench runs in smoke mode here so it cannot
        // rot; its output goes beside, not over, the real figures.
        (
            "bench smoke",
            cargo(&[
                "run",
                "-p",
                "hola-tests",
                "--bin",
                "bench-dataplane",
                "--",
                "--smoke",
                "--out",
                "target/bench/dataplane-smoke.json",
            ]),
        ),
        (
            "bench control smoke",
            cargo(&[
                "run",
                "-p",
                "hola-tests",
                "--bin",
                "bench-control",
                "--",
                "--smoke",
                "--out",
                "target/bench/control-smoke.json",
            ]),
        ),
        (
            "bench forward smoke",
            cargo(&[
                "run",
                "-p",
                "hola-tests",
                "--bin",
                "bench-forward",
                "--",
                "--smoke",
                "--out",
                "target/bench/forward-smoke.json",
            ]),
        ),
        (
            "bench proxy smoke",
            cargo(&[
                "run",
                "-p",
                "hola-tests",
                "--bin",
                "bench-proxy",
                "--",
                "--smoke",
                "--out",
                "target/bench/proxy-smoke.json",
            ]),
        ),
        (
            "bench report smoke",
            cargo(&[
                "run",
                "-p",
                "hola-tests",
                "--bin",
                "bench-report",
                "--",
                "--smoke",
                "--out",
                "target/bench/report-smoke/benchmarks.md",
                "--plot",
                "target/bench/report-smoke/benchmarks.png",
            ]),
        ),
        // The Debian package builds (from the dev binary built above: the
        // same files, without a second, optimised build of everything),
        // holds its files, and systemd accepts its unit
        // (xtask/src/package.rs).
        (
            "package",
            cargo(&[
                "run",
                "-q",
                "-p",
                "xtask",
                "--",
                "package",
                "--check",
                "--profile",
                "dev",
            ]),
        ),
    ];

    // + setup, module graph, privileged tests
    let total = steps.len() + 3;
    println!("==> [1/{total}] setup");
    toolchain::setup(false).context("step `setup` failed")?;
    // The library's modules must not import each other in a cycle
    // (docs/architecture.md); cheap, so before the builds.
    println!("==> [2/{total}] module graph: cargo xtask modgraph");
    crate::modgraph::check(crate::repo_root()).context("step `module graph` failed")?;
    // The upgrade test's older hola: built beside the steps below on a new
    // machine (xtask/src/upgrade_base.rs); ended if a step fails.
    let base = crate::upgrade_base::start().context("starting the older hola's build")?;
    if base.is_some() {
        privileged.env(crate::upgrade_base::BACKGROUND_ENV, "1");
    }
    steps.push(("privileged tests", privileged));
    for (i, (name, mut cmd)) in steps.into_iter().enumerate() {
        println!("==> [{}/{total}] {name}: {}", i + 3, show(&cmd));
        run_status(&mut cmd).with_context(|| format!("step `{name}` failed"))?;
    }
    drop(base);
    Ok(())
}
