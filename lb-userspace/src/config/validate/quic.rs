//! The checks of a `quic = true` VIP and its backends' `server_id`s.

use std::collections::HashMap;

use crate::config::VipConfig;
use crate::config::error::Sink;
use crate::config::values::{Protocol, VipMode};

/// `quic` needs a UDP VIP in dsr or tunnel mode; `server_id` needs `quic`,
/// is 1..=65535 and names one backend of the VIP.
pub(super) fn check_quic(sink: &mut Sink<'_>, path: &str, vip: &VipConfig) {
    let key = vip.key();
    if vip.quic {
        let p = format!("{path}.quic");
        if vip.protocol != Protocol::Udp {
            sink.error(
                &p,
                format!(
                    "{p} = true: VIP {key} is TCP; QUIC runs over UDP: set protocol = \"udp\" \
                     or remove quic"
                ),
            );
        } else if !matches!(vip.mode, VipMode::Dsr | VipMode::Tunnel) {
            sink.error(
                &p,
                format!(
                    "{p} = true: VIP {key} is in mode \"{}\"; connection-ID routing is for \
                     mode = \"dsr\" or \"tunnel\": change the mode or remove quic",
                    vip.mode
                ),
            );
        }
    }
    let mut seen: HashMap<u16, usize> = HashMap::new();
    for (j, b) in vip.backends.iter().enumerate() {
        let Some(id) = b.server_id else { continue };
        let p = format!("{path}.backend[{j}].server_id");
        if !vip.quic {
            sink.error(
                &p,
                format!(
                    "{p} = {id}: backend {} of VIP {key} has a server ID but the VIP is not \
                     QUIC; add quic = true to {path} or remove server_id",
                    b.address
                ),
            );
        } else if id == 0 {
            sink.error(
                &p,
                format!(
                    "{p} = 0: backend {} of VIP {key}: server IDs are 1..=65535 (0 is never \
                     issued); pick another",
                    b.address
                ),
            );
        } else if let Some(&first) = seen.get(&id) {
            sink.error(
                &p,
                format!(
                    "{p} = {id}: backends {} ({path}.backend[{first}]) and {} of VIP {key} both \
                     have server ID {id}; give each backend of the VIP its own server_id",
                    vip.backends[first].address, b.address
                ),
            );
        } else {
            seen.insert(id, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const VIP: &str = "[global]\ninterfaces = [\"eth0\"]\n\
        [[vip]]\naddress = \"198.18.1.1\"\nport = 443\nprotocol = \"udp\"\nquic = true\n";

    fn errors(text: &str) -> Vec<String> {
        match parse(text, "hola.toml") {
            Ok(c) => panic!("expected errors, parsed {c:?}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn server_ids_parse_into_the_backends() {
        let text = format!(
            "{VIP}[[vip.backend]]\naddress = \"198.18.0.11\"\nserver_id = 7\n\
             [[vip.backend]]\naddress = \"198.18.0.12\"\nserver_id = 8\n"
        );
        let c = parse(&text, "hola.toml").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.vips[0].quic);
        let ids: Vec<_> = c.vips[0].backends.iter().map(|b| b.server_id).collect();
        assert_eq!(ids, [Some(7), Some(8)]);
    }

    #[test]
    fn a_duplicate_server_id_names_the_vip_both_backends_and_the_fix() {
        let text = format!(
            "{VIP}[[vip.backend]]\naddress = \"198.18.0.11\"\nserver_id = 7\n\
             [[vip.backend]]\naddress = \"198.18.0.12\"\nserver_id = 7\n"
        );
        assert_eq!(
            errors(&text),
            [
                "hola.toml:13: vip[0].backend[1].server_id = 7: backends 198.18.0.11 \
              (vip[0].backend[0]) and 198.18.0.12 of VIP 198.18.1.1:443/udp both have server \
              ID 7; give each backend of the VIP its own server_id"
            ]
        );
    }

    #[test]
    fn quic_needs_udp_dsr_or_tunnel_and_server_ids_need_quic() {
        let tcp = "[global]\ninterfaces = [\"eth0\"]\n\
            [[vip]]\naddress = \"198.18.1.1\"\nport = 443\nquic = true\n";
        assert_eq!(
            errors(tcp),
            [
                "hola.toml:6: vip[0].quic = true: VIP 198.18.1.1:443/tcp is TCP; QUIC runs over \
              UDP: set protocol = \"udp\" or remove quic"
            ]
        );
        let nat = VIP.replace("quic = true", "mode = \"nat\"\nquic = true");
        assert_eq!(
            errors(&nat),
            [
                "hola.toml:8: vip[0].quic = true: VIP 198.18.1.1:443/udp is in mode \"nat\"; \
              connection-ID routing is for mode = \"dsr\" or \"tunnel\": change the mode or \
              remove quic"
            ]
        );
        let plain = VIP.replace("quic = true\n", "")
            + "[[vip.backend]]\naddress = \"198.18.0.11\"\nserver_id = 3\n";
        assert_eq!(
            errors(&plain),
            [
                "hola.toml:9: vip[0].backend[0].server_id = 3: backend 198.18.0.11 of VIP \
              198.18.1.1:443/udp has a server ID but the VIP is not QUIC; add quic = true to \
              vip[0] or remove server_id"
            ]
        );
        for (v, why) in [
            ("0", "server IDs are 1..=65535"),
            ("70000", "must be 1..=65535"),
        ] {
            let text =
                format!("{VIP}[[vip.backend]]\naddress = \"198.18.0.11\"\nserver_id = {v}\n");
            let e = errors(&text);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with(&format!("hola.toml:10: vip[0].backend[0].server_id = {v}:"))
                    && e[0].contains(why),
                "{e:?}"
            );
        }
    }
}
