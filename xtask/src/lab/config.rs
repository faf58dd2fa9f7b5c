//! The hola.toml files the lab writes (docs/configuration.md): the
//! balancer's in `target/lab/`, and each cluster node's in `target/lab/nN/`
//! with the key the nodes share.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use netlab::lab::{DSR_VIP_V4, DSR_VIP_V6, TUNNEL_VIP_V4, backend, backend_v6};

use super::{
    BPFFS, lab_dir,
    topology::{BACKENDS, NAT_GW_V4, nat_backend},
};

/// Backend weights in every VIP: b3 gets half of the new flows.
const WEIGHTS: &[u32] = &[1, 1, 2];
/// The VIP in NAT mode (routed to the balancer with the others).
const NAT_VIP: &str = "198.18.1.3";
/// The VIP in fullnat mode: backends see the balancer's 198.18.2.1.
const FULLNAT_VIP: &str = "198.18.1.4";
/// The QUIC VIP's port (on the dsr address, UDP, `quic = true`).
const QUIC_PORT: u16 = 443;
/// Where hola-backend serves QUIC (`--quic`), for the QUIC VIP.
pub(super) const QUIC_LISTEN: &str = "0.0.0.0:443";

pub(super) fn config_path() -> PathBuf {
    lab_dir().join("hola.toml")
}

pub(super) fn socket_path() -> PathBuf {
    lab_dir().join("hola.sock")
}

/// Where cluster node `i` keeps its config, socket and state.
fn node_dir(i: usize) -> PathBuf {
    lab_dir().join(format!("n{i}"))
}

pub(super) fn node_config(i: usize) -> PathBuf {
    node_dir(i).join("hola.toml")
}

pub(super) fn node_socket(i: usize) -> PathBuf {
    node_dir(i).join("hola.sock")
}

/// The balancer's configuration.
pub(super) fn balancer() -> String {
    let lab = lab_dir();
    let mut s = format!(
        "# Written by `cargo xtask lab up`; the lab's balancer.\n\
         [global]\n\
         interfaces = [\"eth0\"]\n\
         control_socket = \"{}\"\n\
         state_file = \"{}\"\n\
         bpffs_dir = \"{BPFFS}/lb\"\n\
         metrics_address = \"127.0.0.1:9464\"\n\
         flow_capacity_per_cpu = 65536\n\
         fullnat_source_v4 = \"{NAT_GW_V4}\"\n",
        lab.join("hola.sock").display(),
        lab.join("state.toml").display(),
    );
    let v4: Vec<String> = (1..=BACKENDS).map(|i| backend(i).1).collect();
    let v6: Vec<String> = (1..=BACKENDS).map(backend_v6).collect();
    let nat: Vec<String> = (1..=BACKENDS).map(nat_backend).collect();
    for (vip, proto, mode, backends) in [
        (DSR_VIP_V4, "tcp", "dsr", &v4),
        (NAT_VIP, "tcp", "nat", &nat),
        (FULLNAT_VIP, "tcp", "fullnat", &nat),
        (TUNNEL_VIP_V4, "tcp", "tunnel", &v4),
        (DSR_VIP_V6, "tcp", "dsr", &v6),
        (DSR_VIP_V4, "udp", "dsr", &v4),
    ] {
        s += &format!(
            "\n[[vip]]\naddress = \"{vip}\"\nport = 80\nprotocol = \"{proto}\"\nmode = \"{mode}\"\n"
        );
        // hola-backend answers HTTP on tcp/80 and any datagram on udp/80.
        let check = if proto == "udp" { "udp" } else { "http" };
        s += &format!(
            "\n[vip.health]\ntype = \"{check}\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n"
        );
        for (addr, weight) in backends.iter().zip(WEIGHTS) {
            s += &format!("\n[[vip.backend]]\naddress = \"{addr}\"\nweight = {weight}\n");
        }
    }
    // QUIC: short headers go to the backend whose server ID (hola-backend
    // --server-id i on bi) their connection ID carries.
    s += &format!(
        "\n[[vip]]\naddress = \"{DSR_VIP_V4}\"\nport = {QUIC_PORT}\nprotocol = \"udp\"\n\
         mode = \"dsr\"\nquic = true\n"
    );
    for (i, (addr, weight)) in v4.iter().zip(WEIGHTS).enumerate() {
        s += &format!(
            "\n[[vip.backend]]\naddress = \"{addr}\"\nweight = {weight}\nserver_id = {}\n",
            i + 1
        );
    }
    s
}

/// Node `i`'s configuration in the cluster lab: the dsr VIP over every
/// backend, the `[cluster]` with the shared key in `key_file`, and `[bgp]`.
pub(super) fn node(i: usize, key_file: &Path) -> String {
    let d = node_dir(i);
    let vip = netlab::cluster::VIP;
    let mut s = format!(
        "# Written by `cargo xtask lab up --nodes N`; node n{i} of the lab's cluster.\n\
         [global]\n\
         interfaces = [\"eth0\"]\n\
         control_socket = \"{}\"\n\
         state_file = \"{}\"\n\
         bpffs_dir = \"{BPFFS}/n{i}\"\n\
         metrics_address = \"\"\n\
         flow_capacity_per_cpu = 65536\n\
         \n[cluster]\n\
         id = \"hola-lab\"\n\
         key_file = \"{}\"\n\
         node = \"n{i}\"\n\
         \n[[vip]]\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n\
         \n[vip.health]\ntype = \"http\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n",
        d.join("hola.sock").display(),
        d.join("state.toml").display(),
        key_file.display(),
    );
    for b in 1..=BACKENDS {
        s += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend(b).1);
    }
    // BGP towards the router's BIRD (netlab::bird); `hola bgp config`
    // makes the node's BIRD configuration from this.
    s += &format!(
        "\n[bgp]\nlocal_as = {}\nrouter_id = \"{}\"\nannounce_delay = \"1s\"\n\n[[bgp.peer]]\n\
         address = \"{}\"\nremote_as = {}\n",
        netlab::bird::NODE_AS,
        netlab::cluster::node(i).1,
        netlab::cluster::ROUTER_BACK,
        netlab::bird::ROUTER_AS,
    );
    s
}

/// Writes node `i`'s directory and configuration (no state file: a fresh
/// lab starts from the config).
pub(super) fn write_node(i: usize, key_file: &Path) -> Result<()> {
    fs::create_dir_all(node_dir(i))?;
    let _ = fs::remove_file(node_dir(i).join("state.toml"));
    fs::write(node_config(i), node(i, key_file))
        .with_context(|| format!("writing {}", node_config(i).display()))
}

/// Writes the key every node shares, fresh for each lab; returns its file.
pub(super) fn write_cluster_key() -> Result<PathBuf> {
    let key_file = lab_dir().join("cluster.key");
    let mut key = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
        .context("reading /dev/urandom for the cluster key")?;
    let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(&key_file, format!("{key}\n"))
        .with_context(|| format!("writing {}", key_file.display()))?;
    Ok(key_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_balancer_serves_every_mode_over_the_three_backends() {
        let c = balancer();
        for vip in [
            "198.18.1.1",
            "198.18.1.2",
            "198.18.1.3",
            "198.18.1.4",
            "2001:db8:1::1",
        ] {
            assert!(c.contains(&format!("address = \"{vip}\"")), "{vip} in {c}");
        }
        for backend in ["198.18.0.13", "2001:db8::13", "198.18.2.13"] {
            assert!(
                c.contains(&format!("address = \"{backend}\"\nweight = 2")),
                "{backend} with weight 2 in {c}"
            );
        }
        assert!(c.contains("fullnat_source_v4 = \"198.18.2.1\""));
        assert!(c.contains("port = 443\nprotocol = \"udp\"\nmode = \"dsr\"\nquic = true\n"));
        for i in 1..=3 {
            assert!(
                c.contains(&format!(
                    "address = \"198.18.0.1{i}\"\nweight = {}\nserver_id = {i}\n",
                    WEIGHTS[i - 1]
                )),
                "b{i} with server ID {i} in {c}"
            );
        }
    }
}
