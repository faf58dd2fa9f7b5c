//! The configuration's tests: files through [`parse`] (the TOML front end
//! and the checks together), [`Config::validate`], serde round trips, and
//! the examples in docs/.

use std::collections::HashSet;

use super::values::Choice;
use super::*;

const EXAMPLE: &str = include_str!("../../../docs/hola.example.toml");

fn errors(text: &str) -> Vec<String> {
    match parse(text, "hola.toml") {
        Ok(c) => panic!("expected errors, parsed {c:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// The one error of `text`, which must start with `hola.toml:LINE: PATH`.
fn one_error(text: &str, line: usize, path: &str) -> String {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let want = format!("hola.toml:{line}: {path}");
    assert!(
        errs[0].starts_with(&want),
        "{:?} does not start with {want:?}",
        errs[0]
    );
    errs[0].clone()
}

const BASE: &str = "[global]\ninterfaces = [\"eth0\"]\n";

#[test]
fn example_parses_and_validates() {
    let c = parse(EXAMPLE, "hola.example.toml").unwrap_or_else(|e| panic!("{e}"));
    c.validate("hola.example.toml").unwrap();
    assert!(!c.vips.is_empty());
    assert_eq!(c.global.interfaces[0], "eth0");
}

#[test]
fn defaults_apply() {
    let c = parse(
        "[global]\ninterfaces = [\"eth0\"]\n[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\n",
        "hola.toml",
    )
    .unwrap();
    let g = &c.global;
    assert_eq!(g.xdp_mode, XdpMode::Auto);
    assert_eq!(g.flow_capacity_per_cpu, 1_048_576);
    assert_eq!(g.max_vips, 256);
    assert_eq!(g.max_backends, 4096);
    assert_eq!(g.ring_capacity, 1_048_592);
    assert_eq!(g.default_table_size, 65537);
    assert_eq!(g.control_socket, Path::new("/run/hola/hola.sock"));
    assert_eq!(g.metrics_address, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(g.tunnel_source_v4.to_string(), "198.18.255.0/24");
    assert_eq!(g.tunnel_source_v6.to_string(), "2001:db8:ffff::/112");
    assert_eq!(g.nat_capacity, 1 << 20);
    assert_eq!(
        (g.nat_tcp_timeout, g.nat_udp_timeout, g.nat_closed_timeout),
        (
            Duration::from_secs(900),
            Duration::from_secs(60),
            Duration::from_secs(10)
        )
    );
    assert_eq!(
        (g.table_grace, g.new_flow_rate),
        (Duration::from_secs(60), 125_000)
    );
    let v = &c.vips[0];
    assert_eq!(
        (v.protocol, v.mode, v.hash, v.table_size),
        (Protocol::Tcp, VipMode::Dsr, HashKind::FiveTuple, None)
    );
    assert_eq!(c.table_size(v), 65537);
    let b = &v.backends[0];
    assert_eq!(
        (b.weight, b.backup, b.interface.as_deref()),
        (1, false, None)
    );
}

#[test]
fn nat_keys_are_checked() {
    let base = "[global]\ninterfaces = [\"eth0\"]\nnat_udp_timeout = \"0s\"\n\
                nat_tcp_timeout = \"soon\"\nnat_capacity = 0\n\
                [[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"dsr\"\n\
                [[vip.backend]]\naddress = \"198.18.0.11\"\nport = 8080\n\
                [[vip]]\naddress = \"198.18.1.2\"\nport = 0\nmode = \"nat\"\n\
                [[vip.backend]]\naddress = \"198.18.0.12\"\nport = 8080\n";
    let e = parse(base, "n.toml").unwrap_err().to_string();
    for want in [
        "global.nat_udp_timeout = \"0s\": must be \"1s\"..=\"86400s\"",
        "global.nat_tcp_timeout = \"soon\": not a duration",
        "global.nat_capacity = 0",
        "vip[0].backend[0].port = 8080: only for mode = \"nat\" (dsr keeps the VIP's port)",
        "vip[1].backend[0].port = 8080: the VIP has port 0 (all ports)",
    ] {
        assert!(e.contains(want), "{want:?} in:\n{e}");
    }
}

#[test]
fn grace_and_rate_are_checked() {
    let c = |extra: &str| {
        format!(
            "[global]\ninterfaces = [\"eth0\"]\n{extra}\n[[vip]]\naddress = \"198.18.1.1\"\n\
             port = 80\n[[vip.backend]]\naddress = \"198.18.0.11\"\n"
        )
    };
    let e = parse(&c("table_grace = \"7200s\"\nnew_flow_rate = -1"), "g.toml")
        .unwrap_err()
        .to_string();
    for want in [
        "global.table_grace = \"7200s\": must be \"0s\"..=\"3600s\"",
        "global.new_flow_rate = -1",
    ] {
        assert!(e.contains(want), "{want:?} in:\n{e}");
    }
    let ok = parse(&c("table_grace = \"0s\"\nnew_flow_rate = 0"), "g.toml").expect("valid");
    ok.validate("g.toml").expect("valid");
    assert_eq!(
        (ok.global.table_grace, ok.global.new_flow_rate),
        (Duration::ZERO, 0),
        "0 turns each off"
    );
}

#[test]
fn round_trip() {
    let mut c = parse(EXAMPLE, "x").unwrap();
    // Cover every enum value and the optional fields both ways.
    c.global.metrics_address = None;
    c.global.xdp_mode = XdpMode::Generic;
    c.vips[0].hash = HashKind::Source;
    c.vips[0].protocol = Protocol::Udp;
    c.vips[0].mode = VipMode::Tunnel;
    c.vips[0].table_size = Some(655_373);
    c.global.ring_capacity = 2_000_000;
    c.vips[0].backends[0].interface = Some("eth1".into());
    c.vips[0].backends[0].backup = true;
    for cfg in [parse(EXAMPLE, "x").unwrap(), c] {
        let text = cfg.to_toml();
        let back = parse(&text, "round-trip").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, cfg, "{text}");
    }
    // The hand-written names agree with serde's.
    for (n, v) in XdpMode::CHOICES {
        assert_eq!(::toml::Value::try_from(v).unwrap().as_str(), Some(*n));
    }
    for (n, v) in HashKind::CHOICES {
        assert_eq!(::toml::Value::try_from(v).unwrap().as_str(), Some(*n));
    }
    for (n, v) in VipMode::CHOICES {
        assert_eq!(::toml::Value::try_from(v).unwrap().as_str(), Some(*n));
    }
    for (n, v) in Protocol::CHOICES {
        assert_eq!(::toml::Value::try_from(v).unwrap().as_str(), Some(*n));
    }
}

fn vip_text(extra_global: &str, vips: &str) -> String {
    format!("{BASE}{extra_global}{vips}")
}

#[test]
fn cluster_parses_with_defaults_and_is_never_written_back() {
    let text = format!(
        "{BASE}[cluster]\nid = \"prod-a\"\nkey = \"0123456789abcdef\"\npeers = [\"198.18.0.3\", \"198.18.0.4:8000\"]\n"
    );
    let c = parse(&text, "hola.toml").unwrap_or_else(|e| panic!("{e}"));
    let k = c.cluster.as_ref().expect("cluster");
    assert_eq!(k.port, defaults::CLUSTER_PORT);
    assert_eq!(k.group, defaults::CLUSTER_GROUP);
    assert_eq!(k.announce_interval, defaults::ANNOUNCE_INTERVAL);
    assert_eq!(k.peer_timeout, defaults::PEER_TIMEOUT);
    assert!(k.multicast && k.replicate);
    assert_eq!(k.peer_flow_capacity, None, "default: as large as FLOWS");
    assert_eq!(
        k.peers
            .iter()
            .filter_map(|p| k.peer_addr(p))
            .collect::<Vec<_>>(),
        [
            "198.18.0.3:7947".parse::<SocketAddr>().expect("literal"),
            "198.18.0.4:8000".parse().expect("literal")
        ]
    );
    // The key never reaches the state file or `hola config`.
    let written = c.to_toml();
    assert!(!written.contains("cluster") && !written.contains("0123456789abcdef"));
}

#[test]
fn cluster_errors_name_the_key_and_the_fix() {
    let cases = [
        ("key = \"0123456789abcdef\"\n", "cluster.id is missing"),
        ("id = \"a\"\n", "neither key nor key_file"),
        (
            "id = \"a\"\nkey = \"short\"\n",
            "cluster.key is 5 characters",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\nkey_file = \"/k\"\n",
            "both set",
        ),
        (
            "id = \"a b\"\nkey = \"0123456789abcdef\"\n",
            "cluster.id = \"a b\"",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\ngroup = \"198.18.0.1\"\n",
            "not a multicast address",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\npeers = [\"nowhere\"]\n",
            "cluster.peers[0] = \"nowhere\"",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\nmulticast = false\n",
            "would find no peer",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\nannounce_interval = \"1s\"\npeer_timeout = \"1s\"\n",
            "at least twice announce_interval",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\nqueue = 0\n",
            "cluster.queue = 0",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\nport = 0\n",
            "cluster.port = 0",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\npeer_flow_capacity = 0\n",
            "cluster.peer_flow_capacity = 0: must be 1..=1073741824",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\npeer_flow_capacity = 1073741825\n",
            "cluster.peer_flow_capacity = 1073741825: must be 1..=1073741824",
        ),
        (
            "id = \"a\"\nkey = \"0123456789abcdef\"\npeer_flow_capacity = 99999999999\n",
            "cluster.peer_flow_capacity = 99999999999: must be 1..=1073741824",
        ),
    ];
    for (body, want) in cases {
        let errs = errors(&format!("{BASE}[cluster]\n{body}"));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{body:?}: {want:?} not in {errs:#?}"
        );
    }
}

#[test]
fn cluster_peer_flow_capacity() {
    let cluster = format!("{BASE}[cluster]\nid = \"a\"\nkey = \"0123456789abcdef\"\n");
    let c = parse(
        &format!("{cluster}peer_flow_capacity = 5000\n"),
        "hola.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.cluster.expect("cluster").peer_flow_capacity, Some(5000));
    let top = defaults::PEER_FLOW_CAPACITY_RANGE.hi;
    let c = parse(
        &format!("{cluster}peer_flow_capacity = {top}\n"),
        "hola.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.cluster.expect("cluster").peer_flow_capacity, Some(top));
    // Out of range: one error, at the key's line, with the range.
    for bad in ["0", "1073741825", "-1", "99999999999"] {
        let e = one_error(
            &format!("{cluster}peer_flow_capacity = {bad}\n"),
            6,
            "cluster.peer_flow_capacity",
        );
        assert_eq!(
            e,
            format!("hola.toml:6: cluster.peer_flow_capacity = {bad}: must be 1..=1073741824")
        );
    }
}

#[test]
fn weight_out_of_range() {
    let text = vip_text(
        "",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
         [[vip]]\naddress = \"198.18.1.2\"\nport = 80\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\nweight = 70000\n",
    );
    let e = one_error(&text, 11, "vip[1].backend[0].weight = 70000");
    assert!(
        e.ends_with("must be 0..=10000 (0 drains the backend)"),
        "{e}"
    );
}

#[test]
fn duplicate_vip() {
    let text = vip_text(
        "",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
         [[vip]]\naddress = \"198.18.1.1\"\nport = 80\n",
    );
    let e = one_error(&text, 7, "vip[1] = 198.18.1.1:80/tcp");
    assert!(e.contains("vip[0]"), "{e}");
    // Another protocol is another VIP.
    parse(
        &text.replace(
            "port = 80\n[[vip]]",
            "port = 80\nprotocol = \"udp\"\n[[vip]]",
        ),
        "x",
    )
    .unwrap();
}

#[test]
fn duplicate_backend() {
    let text = vip_text(
        "",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\n",
    );
    let e = one_error(&text, 9, "vip[0].backend[1].address = \"198.18.0.11\"");
    assert!(e.contains("vip[0].backend[0]"), "{e}");
}

#[test]
fn family_mismatch() {
    let text = vip_text(
        "",
        "[[vip]]\naddress = \"2001:db8::1\"\nport = 443\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\n",
    );
    let e = one_error(&text, 7, "vip[0].backend[0].address = \"198.18.0.11\"");
    assert!(e.contains("IPv4 but the VIP 2001:db8::1 is IPv6"), "{e}");
}

#[test]
fn table_size_not_prime() {
    let text = vip_text(
        "",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\ntable_size = 65536\n",
    );
    let e = one_error(&text, 6, "vip[0].table_size = 65536");
    assert!(e.contains("not prime; 65537 and 655373 are primes"), "{e}");
    let text = format!("{BASE}default_table_size = 100\n");
    one_error(&text, 3, "global.default_table_size = 100: not prime");
}

#[test]
fn table_too_small_for_backends() {
    let mut text = vip_text(
        "",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\ntable_size = 7\n",
    );
    for i in 0..7 {
        text.push_str(&format!("[[vip.backend]]\naddress = \"198.18.0.{i}\"\n"));
    }
    let e = one_error(&text, 6, "vip[0].table_size = 7");
    assert!(e.contains("greater than the VIP's 7 backends"), "{e}");
}

#[test]
fn ring_capacity_too_small() {
    let text = vip_text(
        "ring_capacity = 100000\n",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
         [[vip]]\naddress = \"198.18.1.1\"\nport = 443\n",
    );
    let e = one_error(&text, 3, "global.ring_capacity = 100000");
    assert!(
        e.contains("raise global.ring_capacity to at least 131074"),
        "{e}"
    );
    // Not written: the line of [global].
    let text = text
        .replace("ring_capacity = 100000\n", "")
        .replace("port = 443", "port = 443\ntable_size = 1048573");
    let e = one_error(&text, 1, "global.ring_capacity = 1048592");
    assert!(e.contains("at least 1114110"), "{e}");
}

#[test]
fn too_many_vips_and_backends() {
    let text = vip_text(
        "max_vips = 1\nmax_backends = 1\n",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
         [[vip.backend]]\naddress = \"198.18.0.1\"\n\
         [[vip]]\naddress = \"198.18.1.1\"\nport = 443\n\
         [[vip.backend]]\naddress = \"198.18.0.1\"\n",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("hola.toml:3: global.max_vips = 1: 2 VIPs"),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("hola.toml:4: global.max_backends = 1: the VIPs have 2 backends"),
        "{errs:#?}"
    );
}

#[test]
fn bad_vip_addresses() {
    for (addr, what) in [
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
    ] {
        let text = vip_text("", &format!("[[vip]]\nport = 80\naddress = \"{addr}\"\n"));
        let e = one_error(&text, 5, &format!("vip[0].address = \"{addr}\""));
        assert!(e.contains(what), "{e}");
    }
    let e = one_error(
        &vip_text("", "[[vip]]\naddress = \"198.18.1\"\nport = 80\n"),
        4,
        "vip[0].address = \"198.18.1\"",
    );
    assert!(e.contains("not an IP address"), "{e}");
}

#[test]
fn bad_cidrs() {
    let e = one_error(
        &format!("{BASE}tunnel_source_v4 = \"198.18.255.0/33\"\n"),
        3,
        "global.tunnel_source_v4 = \"198.18.255.0/33\"",
    );
    assert!(e.contains("prefix of 0..=32"), "{e}");
    let e = one_error(
        &format!("{BASE}tunnel_source_v4 = \"198.18.255.1/24\"\n"),
        3,
        "global.tunnel_source_v4",
    );
    assert!(e.contains("write \"198.18.255.0/24\""), "{e}");
    let e = one_error(
        &format!("{BASE}tunnel_source_v6 = \"2001:db8::/64\"\n"),
        3,
        "global.tunnel_source_v6 = \"2001:db8::/64\"",
    );
    assert!(e.contains("96..=128"), "{e}");
    one_error(
        &format!("{BASE}tunnel_source_v6 = \"nope\"\n"),
        3,
        "global.tunnel_source_v6 = \"nope\": not a CIDR",
    );
}

#[test]
fn other_fields() {
    one_error(
        &format!("{BASE}xdp_mode = \"skb\"\n"),
        3,
        "global.xdp_mode = \"skb\": must be one of \"auto\", \"driver\", \"generic\"",
    );
    one_error(
        &format!("{BASE}metrics_address = \"localhost\"\n"),
        3,
        "global.metrics_address = \"localhost\": not a socket address",
    );
    assert_eq!(
        parse(&format!("{BASE}metrics_address = \"\"\n"), "x")
            .unwrap()
            .global
            .metrics_address,
        None
    );
    one_error(
        "[global]\ninterfaces = [\"eth0\", \"a/b\"]\n",
        2,
        "global.interfaces[1] = \"a/b\": not an interface name",
    );
    one_error("[global]\ninterfaces = []\n", 2, "global.interfaces = []");
    one_error(
        "[global]\nxdp_mode = \"auto\"\n",
        1,
        "global.interfaces is missing",
    );
    let errs = errors("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n");
    assert_eq!(
        errs,
        [
            "hola.toml: global is missing: add a [global] table with at least interfaces = [\"eth0\"]"
        ]
    );
}

#[test]
fn port_out_of_range() {
    let text = vip_text("", "[[vip]]\naddress = \"198.18.1.1\"\nport = 70000\n");
    one_error(
        &text,
        5,
        "vip[0].port = 70000: must be 0..=65535 (0 = all ports)",
    );
}

#[test]
fn unknown_key() {
    let text = vip_text(
        "",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\nweigth = 3\n",
    );
    let e = one_error(&text, 8, "vip[0].backend[0].weigth: unknown field `weigth`");
    assert!(e.contains("`weight`"), "{e}");
    let e = one_error(
        &format!("{BASE}max_vip = 3\n"),
        3,
        "global.max_vip: unknown field `max_vip`",
    );
    assert!(e.contains("`max_vips`"), "{e}");
}

#[test]
fn wrong_type_and_syntax() {
    one_error(
        &format!("{BASE}max_vips = \"3\"\n"),
        3,
        "global.max_vips: invalid type",
    );
    let errs = errors(&format!("{BASE}max_vips = \n"));
    assert!(
        errs[0].starts_with("hola.toml:3: syntax error"),
        "{errs:#?}"
    );
}

#[test]
fn missing_values_do_not_hide_other_errors() {
    let text = "[global]\ninterfaces = [\"eth 1\"]\ntunnel_source_v6 = \"2001:db8::/64\"\n\
                [[vip]]\nport = 80\n[[vip.backend]]\naddress = \"2001:db8::2\"\nweight = 20000\n\
                [[vip]]\naddress = \"198.18.1.1\"\nport = 80\n[[vip.backend]]\nweight = 1\n";
    let errs = errors(text);
    let want = [
        "hola.toml:2: global.interfaces[0] = \"eth 1\": not an interface name",
        "hola.toml:3: global.tunnel_source_v6 = \"2001:db8::/64\": the prefix must be 96..=128",
        "hola.toml:4: vip[0].address is missing",
        "hola.toml:8: vip[0].backend[0].weight = 20000",
        "hola.toml:12: vip[1].backend[0].address is missing",
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for (e, w) in errs.iter().zip(want) {
        assert!(e.starts_with(w), "{e:?} does not start with {w:?}");
    }
}

#[test]
fn syntax_errors_one_per_line() {
    let errs = errors("[global]\ninterfaces = [\"eth0\"]\nmax_vips = \nmax_backends = 1 2\n");
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("hola.toml:3: syntax error: "),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("hola.toml:4: syntax error: "),
        "{errs:#?}"
    );
}

#[test]
fn all_errors_at_once() {
    let text = vip_text(
        "flow_capacity_per_cpu = 0\n",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\ntable_size = 1000\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\nweight = 70000\n",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].starts_with("hola.toml:3: global.flow_capacity_per_cpu = 0: must be 1..=16777216")
    );
    assert!(errs[1].starts_with("hola.toml:7: vip[0].table_size = 1000: not prime"));
    assert!(errs[2].starts_with("hola.toml:10: vip[0].backend[0].weight = 70000"));
    let rendered = parse(&text, "hola.toml").unwrap_err().to_string();
    assert_eq!(rendered.lines().count(), 3, "{rendered}");
}

#[test]
fn validate_without_lines() {
    let mut c = parse(EXAMPLE, "x").unwrap();
    c.vips[0].backends[0].weight = 70_000;
    let e = c.validate("api").unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].line(), None);
    assert!(
        e.to_string()
            .starts_with("api: vip[0].backend[0].weight = 70000: must be 0..=10000"),
        "{e}"
    );
}

const HEALTH_DOC: &str = include_str!("../../../docs/health-checks.md");

/// Every check type, every key, a per-backend override.
const ALL_CHECKS: &str = r#"[global]
interfaces = ["eth0"]
[[vip]]
address = "198.18.1.1"
port = 80
[vip.health]
type = "http"
interval = "1.5s"
timeout = "500ms"
rise = 4
fall = 5
port = 8080
path = "/healthz"
host = "www.example.com"
expect_status = 204
expect_body = "ok"
slow_start = "30s"
initial = "down"
through = "backend"
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[vip.backend.health]
type = "tcp"
[[vip.backend]]
address = "198.18.0.13"
[vip.backend.health]
type = "udp"
send = "ping"
expect = "pong"
interval = "100ms"
[[vip.backend]]
address = "198.18.0.14"
[vip.backend.health]
type = "exec"
command = ["/usr/local/bin/check", "--fast"]
slow_start = "0s"
"#;

#[test]
fn health_checks_parse_and_round_trip() {
    let c = parse(ALL_CHECKS, "hola.toml").unwrap_or_else(|e| panic!("{e}"));
    let v = &c.vips[0];
    let h = v.health.as_ref().unwrap();
    assert_eq!(
        *h,
        HealthConfig {
            kind: CheckKind::Http,
            interval: Duration::from_millis(1500),
            timeout: Duration::from_millis(500),
            rise: 4,
            fall: 5,
            port: Some(8080),
            path: "/healthz".into(),
            host: Some("www.example.com".into()),
            expect_status: 204,
            expect_body: Some("ok".into()),
            send: "hola-health".into(),
            expect: None,
            command: Vec::new(),
            slow_start: Some(Duration::from_secs(30)),
            initial: crate::config::Initial::Down,
            through: Some(crate::config::Through::Backend),
        }
    );
    let tcp = v.backends[1].health.as_ref().unwrap();
    assert_eq!(*tcp, HealthConfig::new(CheckKind::Tcp));
    let udp = v.backends[2].health.as_ref().unwrap();
    assert_eq!(
        (udp.kind, udp.send.as_str(), udp.expect.as_deref()),
        (CheckKind::Udp, "ping", Some("pong"))
    );
    // The default timeout is capped at the interval.
    assert_eq!(udp.timeout, Duration::from_millis(100));
    let exec = v.backends[3].health.as_ref().unwrap();
    assert_eq!(exec.command, ["/usr/local/bin/check", "--fast"]);
    assert_eq!(exec.slow_start, Some(Duration::ZERO));
    let text = c.to_toml();
    assert!(text.contains("interval = \"1500ms\""), "{text}");
    assert!(text.contains("timeout = \"500ms\""), "{text}");
    assert!(text.contains("interval = \"2s\""), "{text}");
    let back = parse(&text, "round-trip").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, c, "{text}");
    // JSON (the API) round-trips too, and fills defaults.
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
    let h: HealthConfig = serde_json::from_str(r#"{"type":"tcp","interval":"300ms"}"#).unwrap();
    assert_eq!(h.timeout, Duration::from_millis(300));
    assert_eq!(h.rise, 2);
    for (n, v) in CheckKind::CHOICES {
        assert_eq!(::toml::Value::try_from(v).unwrap().as_str(), Some(*n));
    }
}

#[test]
fn health_for_picks_the_override() {
    let c = parse(ALL_CHECKS, "x").unwrap();
    let v = &c.vips[0];
    assert_eq!(v.health_for(&v.backends[0]).unwrap().kind, CheckKind::Http);
    assert_eq!(v.health_for(&v.backends[1]).unwrap().kind, CheckKind::Tcp);
    assert_eq!(v.health_for(&v.backends[3]).unwrap().kind, CheckKind::Exec);
    let mut v = v.clone();
    v.health = None;
    assert_eq!(v.health_for(&v.backends[0]), None);
    assert_eq!(v.health_for(&v.backends[2]).unwrap().kind, CheckKind::Udp);
}

fn health_text(health: &str) -> String {
    vip_text(
        "",
        &format!(
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n[vip.health]\n{health}\
             [[vip.backend]]\naddress = \"198.18.0.11\"\n"
        ),
    )
}

#[test]
fn health_errors() {
    // Line 7 is the first key of [vip.health].
    let e = one_error(
        &health_text("type = \"tcp\"\ninterval = \"2 s\"\n"),
        8,
        "vip[0].health.interval = \"2 s\": not a duration",
    );
    assert!(e.contains("\"1.5s\""), "{e}");
    one_error(
        &health_text("type = \"tcp\"\ninterval = \"1s\"\ntimeout = \"3s\"\n"),
        9,
        "vip[0].health.timeout = \"3s\": longer than interval \"1s\"; make it at most the \
         interval",
    );
    one_error(
        &health_text("type = \"tcp\"\ninterval = \"10ms\"\n"),
        8,
        "vip[0].health.interval = \"10ms\": must be \"50ms\"..=\"3600s\"",
    );
    one_error(
        &health_text("type = \"tcp\"\npath = \"/healthz\"\n"),
        8,
        "vip[0].health.path = \"/healthz\": only for type = \"http\", not \"tcp\"",
    );
    one_error(
        &health_text("type = \"http\"\nsend = \"x\"\n"),
        8,
        "vip[0].health.send = \"x\": only for type = \"udp\", not \"http\"",
    );
    one_error(
        &health_text("type = \"exec\"\n"),
        6,
        "vip[0].health.command is missing or empty",
    );
    one_error(
        &health_text("type = \"exec\"\ncommand = []\n"),
        8,
        "vip[0].health.command is missing or empty",
    );
    let e = one_error(
        &health_text("type = \"http\"\npath = \"healthz\"\n"),
        8,
        "vip[0].health.path = \"healthz\": must start with '/'",
    );
    assert!(e.contains("\"/healthz\""), "{e}");
    one_error(
        &health_text("type = \"http\"\nexpect_status = 42\n"),
        8,
        "vip[0].health.expect_status = 42: must be 100..=599",
    );
    one_error(
        &health_text("type = \"tcp\"\nrise = 0\n"),
        8,
        "vip[0].health.rise = 0: must be 1..=100",
    );
    one_error(
        &health_text("type = \"tcp\"\nslow_start = \"2h\"\n"),
        8,
        "vip[0].health.slow_start = \"2h\": not a duration",
    );
    one_error(
        &health_text("type = \"tcp\"\nslow_start = \"7200s\"\n"),
        8,
        "vip[0].health.slow_start = \"7200s\": must be \"0s\"..=\"3600s\"",
    );
    one_error(
        &health_text("type = \"ping\"\n"),
        7,
        "vip[0].health.type = \"ping\": must be one of \"tcp\", \"http\", \"udp\", \"exec\"",
    );
    one_error(
        &health_text("interval = \"1s\"\n"),
        6,
        "vip[0].health.type is missing",
    );
    let e = one_error(
        &health_text("type = \"tcp\"\npaht = \"/\"\n"),
        8,
        "vip[0].health.paht: unknown field `paht`",
    );
    assert!(e.contains("`path`"), "{e}");
    // All-ports VIP: the check needs a port.
    let text = health_text("type = \"tcp\"\n").replace("port = 80\n", "port = 0\n");
    one_error(
        &text,
        6,
        "vip[0].health.port is missing: the VIP has port 0",
    );
    parse(
        &text.replace("type = \"tcp\"\n", "type = \"tcp\"\nport = 22\n"),
        "x",
    )
    .unwrap();
}

#[test]
fn backend_health_errors() {
    let text = vip_text(
        "",
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\n\
         [vip.backend.health]\ntype = \"udp\"\ncommand = [\"/bin/true\"]\n",
    );
    one_error(
        &text,
        10,
        "vip[0].backend[0].health.command = [\"/bin/true\"]: only for type = \"exec\", not \
         \"udp\"",
    );
}

#[test]
fn health_validate_without_lines() {
    let mut c = parse(ALL_CHECKS, "x").unwrap();
    c.vips[0].backends[1].health.as_mut().unwrap().path = "/x".into();
    c.vips[0].health.as_mut().unwrap().timeout = Duration::from_secs(2);
    let e = c.validate("api").unwrap_err().to_string();
    assert!(
        e.contains("api: vip[0].health.timeout = \"2s\": longer than interval \"1500ms\""),
        "{e}"
    );
    assert!(
        e.contains("api: vip[0].backend[1].health.path = \"/x\": only for type = \"http\""),
        "{e}"
    );
}

/// Each ```toml block of docs/health-checks.md.
fn toml_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match &mut current {
            None if line.trim() == "```toml" => current = Some(String::new()),
            Some(b) if line.trim() == "```" => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    assert!(current.is_none(), "an unterminated ```toml block");
    blocks
}

#[test]
fn health_doc_examples_parse() {
    let blocks = toml_blocks(HEALTH_DOC);
    assert!(blocks.len() >= 5, "{}", blocks.len());
    let mut kinds = HashSet::new();
    for (i, b) in blocks.iter().enumerate() {
        let c =
            parse(b, &format!("health-checks.md block {i}")).unwrap_or_else(|e| panic!("{e}\n{b}"));
        for v in &c.vips {
            for b in &v.backends {
                kinds.insert(v.health_for(b).expect("every example checks").kind);
            }
        }
    }
    assert_eq!(kinds.len(), CheckKind::CHOICES.len(), "{kinds:?}");
    let agents: Vec<_> = blocks
        .iter()
        .filter_map(|b| parse(b, "x").ok())
        .flat_map(|c| c.vips)
        .filter_map(|v| v.agent.clone())
        .collect();
    assert_eq!(
        agents,
        vec![AgentConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            ..AgentConfig::new(9999)
        }],
        "the agent example"
    );
}

const CLUSTER_DOC: &str = include_str!("../../../docs/cluster.md");

/// The hola configurations of docs/cluster.md (its ```toml blocks with a
/// `[cluster]` table) parse and validate; its other ```toml blocks are
/// gobgpd's.
#[test]
fn cluster_doc_examples_parse() {
    let blocks = toml_blocks(CLUSTER_DOC);
    let (hola, other): (Vec<&String>, Vec<&String>) = blocks
        .iter()
        .partition(|b| b.lines().any(|l| l.trim() == "[cluster]"));
    assert!(hola.len() >= 2, "{} hola configurations", hola.len());
    for (i, b) in hola.iter().enumerate() {
        let origin = format!("cluster.md block {i}");
        let c = parse(b, &origin).unwrap_or_else(|e| panic!("{e}\n{b}"));
        c.validate(&origin).unwrap_or_else(|e| panic!("{e}\n{b}"));
        assert!(c.cluster.is_some() && !c.vips.is_empty(), "{b}");
    }
    for b in other {
        assert!(
            b.contains("[global.config]"),
            "a ```toml block of docs/cluster.md that is neither hola's nor gobgpd's:\n{b}"
        );
    }
}

#[test]
fn agent_checks_parse_round_trip_and_fail_clearly() {
    let text = r#"
[global]
interfaces = ["eth0"]

[[vip]]
address = "198.18.1.5"
port = 80

[vip.agent]
port = 9999

[[vip.backend]]
address = "198.18.0.51"

[vip.backend.agent]
port = 8080
path = "/load"
min_percent = 50
max_percent = 200
"#;
    let c = parse(text, "a.toml").unwrap();
    let v = &c.vips[0];
    assert_eq!(v.agent, Some(AgentConfig::new(9999)));
    let own = v.agent_for(&v.backends[0]).unwrap();
    assert_eq!(
        *own,
        AgentConfig {
            path: Some("/load".into()),
            min_percent: 50,
            max_percent: 200,
            ..AgentConfig::new(8080)
        }
    );
    let again = parse(&c.to_toml(), "dump").unwrap();
    assert_eq!(again, c, "to_toml round-trips agents");
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);

    let bad = text
        .replace(
            "port = 9999",
            "port = 0\ninterval = \"1s\"\ntimeout = \"2s\"",
        )
        .replace("min_percent = 50", "min_percent = 300")
        .replace("path = \"/load\"", "path = \"load\"\ncolour = 1");
    let e = parse(&bad, "a.toml").unwrap_err().to_string();
    assert!(e.contains("unknown field `colour`"), "{e}");
    let bad = text
        .replace(
            "port = 9999",
            "port = 0\ninterval = \"1s\"\ntimeout = \"2s\"",
        )
        .replace("min_percent = 50", "min_percent = 300")
        .replace("path = \"/load\"", "path = \"load\"");
    let e = parse(&bad, "a.toml").unwrap_err().to_string();
    for want in [
        "vip[0].agent.port = 0: must be 1..=65535",
        "vip[0].agent.timeout = \"2s\": longer than interval \"1s\"",
        "vip[0].backend[0].agent.min_percent = 300: more than max_percent = 200",
        "vip[0].backend[0].agent.path = \"load\": must start with '/'",
    ] {
        assert!(e.contains(want), "{want:?} in:\n{e}");
    }
    let missing = text.replace("port = 8080\n", "");
    let e = parse(&missing, "a.toml").unwrap_err().to_string();
    assert!(
        e.contains("vip[0].backend[0].agent.port is missing: add it, e.g. port = 9999"),
        "{e}"
    );
}

#[test]
fn example_has_health_checks() {
    let c = parse(EXAMPLE, "x").unwrap();
    let v = &c.vips[0];
    assert_eq!(v.health.as_ref().unwrap().kind, CheckKind::Http);
    assert!(v.backends.iter().any(|b| b.health.is_some()));
}

#[test]
fn missing_file() {
    let e = load(Path::new("/nonexistent/hola.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/hola.toml: cannot read"), "{e}");
    assert!(e.contains("No such file"), "{e}");
}

#[test]
fn fullnat_ports_are_read_once() {
    let c = parse(BASE, "x").unwrap();
    assert_eq!(c.global.fullnat_ports, "20000-59999");
    assert_eq!(c.global.fullnat_port_range(), defaults::FULLNAT_PORTS);
    let c = parse(&format!("{BASE}fullnat_ports = \" 30000 - 40000\"\n"), "x").unwrap();
    assert_eq!(c.global.fullnat_port_range(), (30000, 40000));
    // Not validated: the default.
    let mut g = c.global;
    g.fullnat_ports = "nope".into();
    assert_eq!(g.fullnat_port_range(), defaults::FULLNAT_PORTS);
    assert_eq!(parse_port_range("1024-1025"), Some((1024, 1025)));
    for bad in [
        "1023-2000",
        "2000-2000",
        "3000-2000",
        "1024-65536",
        "1024",
        "a-b",
    ] {
        assert_eq!(parse_port_range(bad), None, "{bad}");
    }
}

/// The API's JSON of a check table: unwritten keys and `null` take their
/// defaults; an unwritten timeout is the interval when that is shorter.
#[test]
fn check_tables_from_json_fill_defaults() {
    let h: HealthConfig = serde_json::from_str(
        r#"{"type":"http","interval":null,"rise":null,"path":null,"command":null}"#,
    )
    .unwrap();
    assert_eq!(h, HealthConfig::new(CheckKind::Http));
    let h: HealthConfig = serde_json::from_str(r#"{"type":"udp","interval":"1.5s"}"#).unwrap();
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_millis(1500), Duration::from_secs(1))
    );
    let a: AgentConfig = serde_json::from_str(r#"{"port":1,"interval":"20ms"}"#).unwrap();
    assert_eq!(
        (a.interval, a.timeout),
        (Duration::from_millis(20), Duration::from_millis(20))
    );
    let a: AgentConfig =
        serde_json::from_str(r#"{"port":1,"min_percent":null,"timeout":"5ms"}"#).unwrap();
    assert_eq!(
        a,
        AgentConfig {
            timeout: Duration::from_millis(5),
            ..AgentConfig::new(1)
        }
    );
    let e = serde_json::from_str::<HealthConfig>(r#"{"type":"tcp","rise":-1}"#).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid value: integer `-1`, expected u32"),
        "{e}"
    );
}

#[test]
fn checks_go_through_the_vip_by_default_for_dsr_and_tunnel() {
    use crate::config::{Through, VipMode};
    let mut h = HealthConfig::new(CheckKind::Tcp);
    assert!(h.through_vip(VipMode::Dsr));
    assert!(h.through_vip(VipMode::Tunnel));
    assert!(!h.through_vip(VipMode::Nat), "nat: the backend's address");
    assert!(!h.through_vip(VipMode::FullNat));
    h.through = Some(Through::Vip);
    assert!(h.through_vip(VipMode::Dsr));
    assert!(!h.through_vip(VipMode::Nat), "vip on nat means as today");
    h.through = Some(Through::Backend);
    assert!(!h.through_vip(VipMode::Dsr));
    assert!(!h.through_vip(VipMode::Tunnel));
    let mut exec = HealthConfig::new(CheckKind::Exec);
    exec.through = Some(Through::Vip);
    assert!(!exec.through_vip(VipMode::Dsr), "a command is not a packet");
}

#[test]
fn a_misspelt_through_is_an_error_naming_the_choices() {
    let e = parse(
        &health_text("type = \"tcp\"\nthrough = \"vips\"\n"),
        "hola.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("vip[0].health.through = \"vips\": must be one of \"vip\", \"backend\""),
        "{e}"
    );
}

#[test]
fn ipv6_flow_capacity() {
    let c = parse(&vip_text("", ""), "hola.toml").expect("parses");
    assert_eq!(c.global.flow_capacity_v6_per_cpu, None, "default: derived");
    assert!(!c.to_toml().contains("flow_capacity_v6_per_cpu"));
    let c = parse(
        &vip_text("flow_capacity_v6_per_cpu = 262144\n", ""),
        "hola.toml",
    )
    .expect("parses");
    assert_eq!(c.global.flow_capacity_v6_per_cpu, Some(262_144));
    assert!(c.to_toml().contains("flow_capacity_v6_per_cpu = 262144"));
    for (bad, line) in [("0", "0"), ("16777217", "16777217"), ("-1", "-1")] {
        let errs = errors(&vip_text(
            &format!("flow_capacity_v6_per_cpu = {bad}\n"),
            "",
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains(&format!(
                "global.flow_capacity_v6_per_cpu = {line}: must be 1..=16777216"
            )),
            "{errs:#?}"
        );
    }
}
