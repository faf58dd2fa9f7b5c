//! Small XDP programs hola ships besides the balancer, attached with their
//! link pinned so they stay after the command exits: `hola-decap` for
//! tunnel-mode backends, and an XDP_PASS program for the bridge-side peer of
//! a veth the balancer transmits on (a veth only takes XDP_TX frames while
//! its peer has an XDP program).

use std::path::Path;

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        Xdp,
        links::{FdLink, LinkError},
        xdp::XdpMode,
    },
};

use crate::{daemon::ensure_bpffs, programs};

fn attach_pinned(object: &[u8], prog: &str, iface: &str, pin: &Path) -> anyhow::Result<()> {
    ensure_bpffs()?;
    if pin.exists() {
        anyhow::bail!(
            "{} exists: something is attached already (detach it first)",
            pin.display()
        );
    }
    let mut ebpf = Ebpf::load(object).context("loading the program")?;
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .context("program missing from the object")?
        .try_into()?;
    p.load().context("the verifier rejected the program")?;
    let id = p
        .attach(iface, XdpMode::Driver)
        .or_else(|e| {
            eprintln!("warning: driver mode on {iface} failed ({e}); using generic mode");
            p.attach(iface, XdpMode::Skb)
        })
        .with_context(|| format!("attaching {prog} to {iface}"))?;
    let link: FdLink = p
        .take_link(id)?
        .try_into()
        .map_err(|e: LinkError| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    link.pin(pin)
        .with_context(|| format!("pinning the link at {}", pin.display()))?;
    println!("{prog} attached to {iface}; pinned at {}", pin.display());
    Ok(())
}

/// `hola decap attach`.
pub fn decap_attach(iface: &str, pin: &Path) -> anyhow::Result<()> {
    attach_pinned(programs::DECAP, lb_common::maps::PROG_DECAP, iface, pin)
}

/// `hola veth-peer attach`.
pub fn veth_peer_attach(iface: &str, pin: &Path) -> anyhow::Result<()> {
    attach_pinned(programs::BENCH, lb_common::maps::PROG_PASS, iface, pin)
}

/// Detaches whatever link is pinned at `pin` (removing the pin destroys the
/// link once no process holds it).
pub fn detach(pin: &Path) -> anyhow::Result<()> {
    std::fs::remove_file(pin).with_context(|| format!("removing {}", pin.display()))?;
    println!("detached: removed {}", pin.display());
    Ok(())
}
