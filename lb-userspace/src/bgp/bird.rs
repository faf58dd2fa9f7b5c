//! `hola bgp config`: the BIRD 2 configuration fragment for this node,
//! made from `[bgp]` (pure). hola never edits BIRD's configuration while
//! it runs; the operator installs this once, and hola only writes routes.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::{BgpConfig, format_duration};

/// BIRD's name for the session with `peer`: `hola_198_18_0_1`.
pub fn protocol_name(peer: IpAddr) -> String {
    let s: String = peer
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("hola_{s}")
}

/// The fragment, with a comment saying where it came from (`source`).
pub fn fragment(b: &BgpConfig, source: &str) -> String {
    let (table, proto) = (b.table, b.route_protocol);
    let mut out = format!(
        "# BIRD 2 configuration for hola, made by `hola bgp config` from [bgp] of {source}.\n\
         # Include it from bird.conf (include \"/etc/bird/hola.conf\";), which also needs\n\
         # `protocol device {{}}` (Debian's default bird.conf has it).\n\
         # hola writes one route per VIP address it announces into kernel table {table}\n\
         # with route protocol {proto}, and deletes it to withdraw; BIRD imports only\n\
         # those routes and announces them to the peers below, each with BFD.\n\n"
    );
    if let Some(id) = b.router_id {
        let _ = writeln!(out, "router id {id};\n");
    }
    out.push_str("ipv4 table hola_vips4;\nipv6 table hola_vips6;\n");
    for (af, tbl) in [("ipv4", "hola_vips4"), ("ipv6", "hola_vips6")] {
        let _ = write!(
            out,
            "\nprotocol kernel hola_kernel_{af} {{\n\
             \tkernel table {table};\n\
             \tlearn;\t\t\t# routes other programs write: hola's\n\
             \tscan time 10;\t\t# changes arrive at once; a full scan now and then\n\
             \t{af} {{\n\
             \t\ttable {tbl};\n\
             \t\timport where krt_source = {proto};\n\
             \t\texport none;\n\
             \t}};\n\
             }}\n"
        );
    }
    let _ = write!(
        out,
        "\n# Failure detection in {} ({} x {}): a dead node's routes leave the router\n\
         # that fast. BIRD runs one protocol bfd; if bird.conf has one, keep that one.\n\
         protocol bfd hola_bfd {{\n\
         \tinterface \"*\" {{\n\
         \t\tinterval {} ms;\n\
         \t\tmultiplier {};\n\
         \t}};\n\
         }}\n",
        format_duration(b.bfd_interval * b.bfd_multiplier),
        b.bfd_multiplier,
        format_duration(b.bfd_interval),
        b.bfd_interval.as_millis(),
        b.bfd_multiplier,
    );
    for p in &b.peers {
        let (af, tbl) = match p.address {
            IpAddr::V4(_) => ("ipv4", "hola_vips4"),
            IpAddr::V6(_) => ("ipv6", "hola_vips6"),
        };
        let _ = write!(
            out,
            "\nprotocol bgp {} {{\n\
             \tlocal as {};\n\
             \tneighbor {} as {};\n\
             \tbfd on;\n\
             \t{af} {{\n\
             \t\ttable {tbl};\n\
             \t\timport none;\n\
             \t\texport all;\n\
             \t\tnext hop self;\n\
             \t}};\n\
             }}\n",
            protocol_name(p.address),
            b.local_as,
            p.address,
            p.remote_as,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_names_table_protocol_peers_and_bfd() {
        let cfg = crate::config::parse(
            "[global]\ninterfaces = [\"eth0\"]\n\n[bgp]\nlocal_as = 65001\n\
             router_id = \"198.18.0.2\"\n\n[[bgp.peer]]\naddress = \"198.18.0.1\"\n\
             remote_as = 65000\n\n[[bgp.peer]]\naddress = \"2001:db8::1\"\nremote_as = 65000\n",
            "hola.toml",
        )
        .unwrap();
        let f = fragment(cfg.bgp.as_ref().unwrap(), "hola.toml");
        for want in [
            "router id 198.18.0.2;",
            "kernel table 201;",
            "import where krt_source = 201;",
            "interval 100 ms;",
            "multiplier 3;",
            "protocol bgp hola_198_18_0_1 {\n\tlocal as 65001;\n\tneighbor 198.18.0.1 as 65000;\n\tbfd on;\n\tipv4 {\n\t\ttable hola_vips4;",
            "protocol bgp hola_2001_db8__1 {",
            "neighbor 2001:db8::1 as 65000;\n\tbfd on;\n\tipv6 {\n\t\ttable hola_vips6;",
        ] {
            assert!(f.contains(want), "{want:?} missing from:\n{f}");
        }
        assert_eq!(f.matches("protocol bgp").count(), 2);
    }
}
