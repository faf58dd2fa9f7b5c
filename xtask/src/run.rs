//! `cargo xtask run`: with no arguments, the lab until Ctrl-C; with
//! `-- --iface NAME --config FILE`, the `hola` daemon on a real NIC.

use std::os::unix::process::CommandExt as _;

use anyhow::{Result, bail};

use crate::{command, is_root, lab, run_status, show, toolchain};

pub(crate) fn run(args: &[String]) -> Result<()> {
    if args.is_empty() {
        return lab::run_lab();
    }
    if !args
        .iter()
        .any(|a| a == "--iface" || a.starts_with("--iface="))
    {
        bail!(
            "`cargo xtask run -- {}`: name the NIC with --iface, e.g. \
             `cargo xtask run -- --iface eth0 --config /etc/hola/hola.toml`, \
             or give no arguments to run hola in the lab",
            args.join(" ")
        );
    }
    if !is_root() {
        bail!("hola attaches XDP programs and needs root: run `cargo xtask run` as root");
    }
    toolchain::setup(false)?;
    run_status(command("cargo").args(["build", "-p", "lb-userspace", "--bin", "hola"]))?;
    let bin = lab::hola_bin();
    let mut hola = command(bin.to_str().expect("the target dir path is UTF-8"));
    hola.arg("run").args(args);
    println!("running: {}", show(&hola));
    // hola replaces xtask, so Ctrl-C and SIGTERM reach hola alone.
    let err = hola.exec();
    bail!("could not start `{}`: {err}", show(&hola))
}
