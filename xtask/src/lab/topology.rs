//! The lab's namespaces, veths, bridge, addresses and routes: netlab's lab
//! (client, balancer and backends b1..b3 on one bridge, in IPv4 and IPv6,
//! the VIPs on the backends' lo) named `hola-lab-*`, plus the backends'
//! NAT subnet behind the balancer.

use std::{ffi::OsStr, process::Command};

use anyhow::Result;
use netlab::lab::{DSR_VIP_V4, DSR_VIP_V6, Family, LabSpec, TUNNEL_VIP_V4, TUNNEL_VIP_V6, backend};

use crate::run_output;

/// Every namespace the lab makes is named `hola-lab-<host>`.
pub(super) const PREFIX: &str = "hola-lab";
/// The lab's backends: b1..b3.
pub(super) const BACKENDS: usize = 3;
/// Held by every backend on lo.
const VIPS_ON_LO: &[&str] = &[DSR_VIP_V4, TUNNEL_VIP_V4, DSR_VIP_V6, TUNNEL_VIP_V6];
/// NAT mode: the backends' own subnet, with the balancer as their gateway.
pub(super) const NAT_GW_V4: &str = "198.18.2.1";

/// Backend `i`'s address on the NAT subnet (b1..b3: 198.18.2.11..13).
pub(super) fn nat_backend(i: usize) -> String {
    format!("198.18.2.{}", 10 + i)
}

/// The names of the backends' hosts: b1..b3.
pub(super) fn backends() -> impl Iterator<Item = String> {
    (1..=BACKENDS).map(|i| backend(i).0)
}

/// The namespace of `host`: `hola-lab-<host>`.
pub(super) fn ns(host: &str) -> String {
    netlab::netns::name(PREFIX, host)
}

/// The `hola-lab-*` namespaces that exist.
pub(super) fn namespaces() -> Result<Vec<String>> {
    Ok(netlab::netns::list(&ns(""))?)
}

/// A command that runs `program` in the network namespace of `host`
/// (nsenter: pins made there stay, see `netlab::netns::nsenter`).
pub(super) fn in_ns(host: &str, program: impl AsRef<OsStr>) -> Command {
    netlab::netns::nsenter(&ns(host), program)
}

/// `program args` in the network namespace of `host`, failing with the
/// command and its stderr.
pub(super) fn ns_exec(host: &str, program: &str, args: &[&str]) -> Result<String> {
    run_output(in_ns(host, program).args(args))
}

/// Makes the topology and leaves it for `lab down` to remove.
pub(super) fn build() -> Result<()> {
    let net = netlab::lab::build(&LabSpec {
        prefix: PREFIX,
        client: "client",
        backends: BACKENDS,
        families: &[Family::V4, Family::V6],
        vips: VIPS_ON_LO,
    })?;
    // NAT mode: the backends also sit in 198.18.2.0/24 behind the balancer
    // and answer from there through it; their replies get the same checksum
    // treatment as the client's requests.
    net.addr("lb", "eth0", &format!("{NAT_GW_V4}/24"))?;
    for i in 1..=BACKENDS {
        let (b, addr) = (backend(i).0, nat_backend(i));
        net.addr(&b, "eth0", &format!("{addr}/24"))?;
        // Only what leaves from this address (NAT replies) goes through
        // the balancer: dsr and tunnel replies, from the VIPs, still go
        // straight to the client.
        net.ip(&b, &["rule", "add", "from", &addr, "table", "100"])?;
        net.ip(
            &b,
            &["route", "add", "default", "via", NAT_GW_V4, "table", "100"],
        )?;
        net.no_tx_offload(&b, "eth0")?;
    }
    net.keep();
    Ok(())
}
