//! BIRD 2 in the cluster lab (docs/cluster.md): the router's configuration
//! (a BGP session and BFD with every node, the sessions' routes merged into
//! one multipath kernel route: ECMP), a node's base configuration (the
//! rest comes from `hola bgp config`), and reading what `birdc` and `ip
//! route` say. Starting and stopping the daemons stays with the callers
//! (the tests track a child, `cargo xtask lab` a PID file).

use std::path::Path;
use std::process::Command;

use crate::{Error, cmd::run};

/// The router's AS; every node is in [`NODE_AS`].
pub const ROUTER_AS: u32 = 65000;
pub const NODE_AS: u32 = 65001;
/// BFD's interval and multiplier in the lab: a dead node is noticed after
/// 300 ms.
pub const BFD_INTERVAL_MS: u32 = 100;
pub const BFD_MULTIPLIER: u32 = 3;

/// BIRD's name for the router's session with `node` (`n1`): `node_n1`.
pub fn session(node: &str) -> String {
    format!("node_{node}")
}

/// The router's configuration: `router_id`, one BGP session with BFD per
/// `(name, address)` of `nodes`, every route they announce merged into one
/// multipath route in the main table. `log` is BIRD's log file.
///
/// A failed session is retried after a second (BIRD's default waits a
/// minute), so that a node that comes back is heard at once.
pub fn router_config(router_id: &str, nodes: &[(String, String)], log: &Path) -> String {
    let mut c = format!(
        "log \"{}\" all;\n\
         router id {router_id};\n\n\
         protocol device {{\n\tscan time 10;\n}}\n\n\
         # The BGP routes into the kernel; equal routes from several nodes\n\
         # become one multipath route (ECMP).\n\
         protocol kernel {{\n\
         \tmerge paths on;\n\
         \tipv4 {{\n\t\timport none;\n\t\texport where source = RTS_BGP;\n\t}};\n\
         }}\n\n\
         protocol bfd {{\n\
         \tinterface \"*\" {{\n\t\tinterval {BFD_INTERVAL_MS} ms;\n\t\tmultiplier {BFD_MULTIPLIER};\n\t}};\n\
         }}\n\n\
         template bgp hola_node {{\n\
         \tlocal as {ROUTER_AS};\n\
         \tbfd on;\n\
         \terror wait time 1, 5;\n\
         \tconnect retry time 1;\n\
         \tipv4 {{\n\t\timport all;\n\t\texport none;\n\t}};\n\
         }}\n",
        log.display()
    );
    for (name, addr) in nodes {
        c += &format!(
            "\nprotocol bgp {} from hola_node {{\n\tneighbor {addr} as {NODE_AS};\n}}\n",
            session(name)
        );
    }
    c
}

/// What a node's bird.conf holds besides `hola bgp config`'s fragment:
/// the log and `protocol device`. Sessions that fail are retried after a
/// second here too.
pub fn node_base(log: &Path) -> String {
    format!(
        "log \"{}\" all;\n\nprotocol device {{\n\tscan time 10;\n}}\n\n",
        log.display()
    )
}

/// `birdc -s SOCKET ARGS...`: what BIRD answered.
pub fn birdc(socket: &Path, args: &[&str]) -> Result<String, Error> {
    run(Command::new("birdc").arg("-s").arg(socket).args(args))
}

/// BGP's states as `birdc show protocols` names them.
const BGP_STATES: &[&str] = &[
    "Idle",
    "Connect",
    "Active",
    "OpenSent",
    "OpenConfirm",
    "Established",
    "Close",
    "Down",
];

/// The state of BGP session `name` in `birdc show protocols` output:
/// "Established", "Active", "Connect", ...; `None` when not listed.
pub fn session_state(show_protocols: &str, name: &str) -> Option<String> {
    show_protocols.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() != Some(&name) || f.get(1) != Some(&"BGP") {
            return None;
        }
        f.iter()
            .skip(3)
            .find(|w| BGP_STATES.contains(w))
            .map(|s| (*s).to_string())
    })
}

/// The gateways of the route `ip route show DEST` printed: one for
/// `DEST via A ...`, several for a multipath route (`nexthop via A ...`
/// lines), none when there is no route.
pub fn nexthops(ip_route: &str) -> Vec<String> {
    let mut out: Vec<String> = ip_route
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_string())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nexthops_of_plain_and_multipath_routes() {
        assert_eq!(
            nexthops("198.18.1.1 via 198.18.0.2 dev eth1 proto bird metric 32 \n"),
            ["198.18.0.2"]
        );
        let multi = "198.18.1.1 proto bird metric 32 \n\tnexthop via 198.18.0.3 dev eth1 weight 1 \n\
                     \tnexthop via 198.18.0.2 dev eth1 weight 1 \n";
        assert_eq!(nexthops(multi), ["198.18.0.2", "198.18.0.3"]);
        assert!(nexthops("").is_empty());
    }

    #[test]
    fn session_states_from_show_protocols() {
        let out = "BIRD 2.0.12 ready.\n\
                   Name       Proto      Table      State  Since         Info\n\
                   device1    Device     ---        up     10:00:00.000  \n\
                   node_n1    BGP        ---        up     10:00:01.000  Established   \n\
                   node_n2    BGP        ---        start  10:00:01.000  Active        Socket: Connection refused\n";
        assert_eq!(
            session_state(out, "node_n1").as_deref(),
            Some("Established")
        );
        assert_eq!(session_state(out, "node_n2").as_deref(), Some("Active"));
        assert_eq!(session_state(out, "node_n3"), None);
    }

    #[test]
    fn the_router_has_a_session_per_node() {
        let c = router_config(
            "198.18.0.1",
            &[
                ("n1".into(), "198.18.0.2".into()),
                ("n2".into(), "198.18.0.3".into()),
            ],
            Path::new("/tmp/x/bird.log"),
        );
        assert!(c.contains("merge paths on;"));
        assert!(
            c.contains("protocol bgp node_n1 from hola_node {\n\tneighbor 198.18.0.2 as 65001;")
        );
        assert!(
            c.contains("protocol bgp node_n2 from hola_node {\n\tneighbor 198.18.0.3 as 65001;")
        );
    }
}
