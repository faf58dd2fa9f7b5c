//! Packet fixtures for QUIC connection-ID routing (`quic` VIPs): the real
//! balancer run by the kernel through BPF_PROG_TEST_RUN, provisioned through
//! `Dataplane` as the daemon provisions it. Each row states the input, the
//! verdict, the exact output bytes and the exact counter changes.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use hola_tests::{
    fixture::{
        self, backend_mac, diff, expected_deltas, hex, pin_to_cpu0, require_root, run, snapshot,
    },
    packet::{L4, LB_MAC, Pkt, with_macs},
};
use lb_common::{
    Reason,
    quic::{QUIC_FIXED_BIT, QUIC_LONG_HEADER, QuicServerKey, encode_cid},
};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Proto, VipAddr, VipSpec,
};

const XDP_TX: u32 = 3;

fn backend(addr: &str, server_id: u16) -> BackendSpec {
    BackendSpec {
        server_id,
        ..fixture::backend(addr)
    }
}

fn vip(addr: &str, port: u16) -> VipAddr {
    VipAddr {
        addr: addr.parse().expect("VIP address"),
        port,
        proto: Proto::Udp,
    }
}

/// A short-header packet's UDP payload: header byte (fixed bit, key phase
/// 0, packet-number length 2), the connection ID, packet number, and 20
/// bytes standing for the protected payload and tag.
fn short(cid: &[u8]) -> Vec<u8> {
    let mut p = vec![QUIC_FIXED_BIT | 0x01];
    p.extend_from_slice(cid);
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend(0..20u8);
    p
}

/// A long-header (Initial) payload whose first ID bytes look like ours.
fn initial(cid: &[u8]) -> Vec<u8> {
    let mut p = vec![
        QUIC_LONG_HEADER | QUIC_FIXED_BIT,
        0,
        0,
        0,
        1,
        cid.len() as u8,
    ];
    p.extend_from_slice(cid);
    p.extend_from_slice(&[0, 0, 0x40, 0x20]);
    p.extend(0..32u8);
    p
}

struct Row {
    name: String,
    input: Vec<u8>,
    output: Vec<u8>,
    reason: Reason,
    vip: VipAddr,
    to: IpAddr,
    /// The packet starts a flow (credited as a new flow of the VIP and
    /// the backend).
    new_flow: bool,
}

impl Row {
    fn dsr(name: &str, p: &Pkt, reason: Reason, vip: VipAddr, to: IpAddr, new_flow: bool) -> Self {
        let input = p.bytes();
        Row {
            name: name.into(),
            output: with_macs(&input, backend_mac(to), LB_MAC),
            input,
            reason,
            vip,
            to,
            new_flow,
        }
    }
}

/// The counters a forwarded packet changes: those of an established or a
/// new flow, with its own reason in place of `fwd_established` or
/// `fwd_new_flow`.
fn deltas(row: &Row) -> BTreeMap<String, u64> {
    let base = if row.new_flow {
        Reason::FwdNewFlow
    } else {
        Reason::FwdEstablished
    };
    let mut d = expected_deltas(row.input.len(), base, Some(row.vip), Some(row.to));
    if row.reason != base {
        for what in ["packets", "bytes"] {
            let v = d
                .remove(&format!("reason.{}.{what}", base.name()))
                .expect("a forward counts its reason");
            d.insert(format!("reason.{}.{what}", row.reason.name()), v);
        }
    }
    d
}

fn check(dp: &mut Dataplane, row: &Row) -> Option<String> {
    let before = snapshot(dp);
    let (action, out) = match run(dp.program().expect("program"), &row.input) {
        Ok(r) => r,
        Err(e) => return Some(format!("{}: BPF_PROG_TEST_RUN failed: {e}", row.name)),
    };
    let got = diff(&before, &snapshot(dp));
    let want = deltas(row);
    let mut errs = Vec::new();
    if action != XDP_TX {
        errs.push(format!("verdict {action}, expected {XDP_TX}"));
    }
    if out != row.output {
        errs.push(format!(
            "output bytes differ\n got:\n{}\n want:\n{}",
            hex(&out),
            hex(&row.output)
        ));
    }
    if got != want {
        errs.push(format!("counter changes {got:?}\n expected {want:?}"));
    }
    (!errs.is_empty()).then(|| format!("{}: {}", row.name, errs.join("; ")))
}

/// A client port from `from` up whose packet `make` builds and `ok` accepts.
fn port_where(from: u16, make: impl Fn(u16) -> Pkt, mut ok: impl FnMut(&Pkt) -> bool) -> Pkt {
    (from..from + 1000)
        .map(make)
        .find(|p| ok(p))
        .expect("a port within 1000 that satisfies the row")
}

/// The quic IPv4 VIP, the same without quic, the quic IPv6 VIP.
fn vips() -> (VipAddr, VipAddr, VipAddr) {
    (
        vip("198.18.1.40", 443),
        vip("198.18.1.41", 443),
        vip("2001:db8:1::40", 443),
    )
}

/// The balancer with a quic IPv4 VIP (server IDs 1 to 3, and 4 on a down
/// backend), the same without quic, and a quic IPv6 VIP; and the IPv4 quic
/// VIP's backends.
fn provision() -> (Dataplane, [BackendSpec; 4]) {
    let cfg = DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        ..Default::default()
    };
    let mut dp = Dataplane::load(cfg).expect("loading the balancer (the verifier must accept it)");

    let (q4, plain, q6) = vips();
    for (v, quic) in [(q4, true), (plain, false), (q6, true)] {
        dp.add_vip(VipSpec {
            vip: v,
            mode: Mode::Dsr,
            src_hash: false,
            table_size: 1021,
            quic,
        })
        .expect("add VIP");
    }
    let mut down = backend("198.18.2.44", 4);
    down.up = false;
    let q4_backends = [
        backend("198.18.2.41", 1),
        backend("198.18.2.42", 2),
        backend("198.18.2.43", 3),
        down,
    ];
    dp.set_backends(&q4, &q4_backends).expect("backends");
    dp.set_backends(
        &plain,
        &[backend("198.18.2.51", 0), backend("198.18.2.52", 0)],
    )
    .expect("backends");
    dp.set_backends(
        &q6,
        &[backend("2001:db8:2::41", 1), backend("2001:db8:2::42", 2)],
    )
    .expect("backends");

    (dp, q4_backends)
}

/// Rows 1 to 7 (see each).
fn rows(dp: &Dataplane) -> Vec<Row> {
    let (q4, plain, q6) = vips();
    let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
    let maglev = |dp: &Dataplane, v: &VipAddr, p: &Pkt| -> IpAddr {
        dp.maglev_backend(v, &p.flow_key())
            .expect("the VIP's table has a backend for every slot")
    };
    let client = "198.18.0.1";
    let nonce = [0xa1, 0xa2, 0xa3, 0xa4, 0xa5];
    let sid2 = encode_cid(2, nonce);
    let to4 =
        |port: u16, payload: &[u8]| Pkt::new(client, "198.18.1.40", L4::udp(port, 443, payload));
    let b2 = ip("198.18.2.42");

    let mut rows = Vec::new();
    // 1. A known ID goes to its server from a 5-tuple Maglev sends
    //    elsewhere, twice: not recorded in the flow table.
    let p = port_where(
        40000,
        |port| to4(port, &short(&sid2)),
        |p| maglev(dp, &q4, p) != b2,
    );
    for n in ["first", "second"] {
        rows.push(Row::dsr(
            &format!("v4 short header, server ID 2, Maglev elsewhere ({n})"),
            &p,
            Reason::FwdQuicServerId,
            q4,
            b2,
            false,
        ));
    }
    // 2. An unknown server ID falls back: Maglev places it, the flow table
    //    keeps it.
    let p = to4(41000, &short(&encode_cid(99, nonce)));
    let m = maglev(dp, &q4, &p);
    rows.push(Row::dsr(
        "v4 unknown server ID 99 (new flow)",
        &p,
        Reason::FwdQuicUnknownId,
        q4,
        m,
        true,
    ));
    rows.push(Row::dsr(
        "v4 unknown server ID 99 (established)",
        &p,
        Reason::FwdQuicUnknownId,
        q4,
        m,
        false,
    ));
    // 3. A long header is balanced by its hash, whatever its ID bytes.
    let p = port_where(
        42000,
        |port| to4(port, &initial(&sid2)),
        |p| maglev(dp, &q4, p) != b2,
    );
    let m = maglev(dp, &q4, &p);
    rows.push(Row::dsr(
        "v4 long header (Initial) by hash",
        &p,
        Reason::FwdNewFlow,
        q4,
        m,
        true,
    ));
    rows.push(Row::dsr(
        "v4 long header again: flow table",
        &p,
        Reason::FwdEstablished,
        q4,
        m,
        false,
    ));
    // 4. A short packet too small to hold an ID.
    let p = to4(
        43000,
        &[QUIC_FIXED_BIT | 0x01, sid2[0], sid2[1], sid2[2], sid2[3]],
    );
    let m = maglev(dp, &q4, &p);
    rows.push(Row::dsr(
        "v4 short header of 5 bytes",
        &p,
        Reason::FwdQuicBadId,
        q4,
        m,
        true,
    ));
    // ... an empty datagram,
    let p = to4(43001, &[]);
    let m = maglev(dp, &q4, &p);
    rows.push(Row::dsr(
        "v4 empty datagram",
        &p,
        Reason::FwdQuicBadId,
        q4,
        m,
        true,
    ));
    // ... another config rotation codepoint (0b111, unroutable),
    let mut other = sid2;
    other[0] |= 0xe0;
    let p = to4(43002, &short(&other));
    let m = maglev(dp, &q4, &p);
    rows.push(Row::dsr(
        "v4 config rotation 0b111",
        &p,
        Reason::FwdQuicBadId,
        q4,
        m,
        true,
    ));
    // ... the fixed bit clear.
    let mut nofix = short(&sid2);
    nofix[0] &= !QUIC_FIXED_BIT;
    let p = to4(43003, &nofix);
    let m = maglev(dp, &q4, &p);
    rows.push(Row::dsr(
        "v4 fixed bit clear",
        &p,
        Reason::FwdQuicBadId,
        q4,
        m,
        true,
    ));
    // 5. The server ID of a down backend falls back (Maglev has no slot
    //    for it).
    let p = to4(44000, &short(&encode_cid(4, nonce)));
    let m = maglev(dp, &q4, &p);
    assert_ne!(m, ip("198.18.2.44"));
    rows.push(Row::dsr(
        "v4 server ID of a down backend",
        &p,
        Reason::FwdQuicIdDown,
        q4,
        m,
        true,
    ));
    // 6. A VIP without quic ignores IDs.
    let p = Pkt::new(
        client,
        "198.18.1.41",
        L4::udp(45000, 443, &short(&encode_cid(1, nonce))),
    );
    let m = maglev(dp, &plain, &p);
    rows.push(Row::dsr(
        "v4 not quic: balanced by hash",
        &p,
        Reason::FwdNewFlow,
        plain,
        m,
        true,
    ));
    // 7. IPv6.
    let p6 = port_where(
        46000,
        |port| {
            Pkt::new(
                "2001:db8::1",
                "2001:db8:1::40",
                L4::udp(port, 443, &short(&sid2)),
            )
        },
        |p| maglev(dp, &q6, p) != ip("2001:db8:2::42"),
    );
    rows.push(Row::dsr(
        "v6 short header, server ID 2",
        &p6,
        Reason::FwdQuicServerId,
        q6,
        ip("2001:db8:2::42"),
        false,
    ));

    rows
}

#[test]
fn quic_connection_id_fixtures() {
    require_root();
    // SAFETY: unshare only affects the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    pin_to_cpu0();
    let (mut dp, q4_backends) = provision();
    let (q4, _, _) = vips();
    // The owner wrote one QUIC_SERVERS entry per server ID of a quic VIP
    // (the down backend's too: the program checks its state).
    let q4_id = dp.tables().vip(&q4).expect("q4").id;
    let ids: Vec<(u32, u16)> = dp
        .quic_servers()
        .keys()
        .map(|k| (k.vip_id, k.server_id))
        .collect();
    assert_eq!(ids.len(), 6, "QUIC_SERVERS holds {ids:?}");
    let b42 = dp.backend_id(&q4, "198.18.2.42".parse().expect("ip"));
    assert_eq!(
        dp.quic_servers()
            .get(&QuicServerKey {
                vip_id: q4_id,
                server_id: 2,
                _pad: 0
            })
            .copied(),
        b42
    );

    let rows = rows(&dp);
    let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
    let maglev = |dp: &Dataplane, v: &VipAddr, p: &Pkt| -> IpAddr {
        dp.maglev_backend(v, &p.flow_key())
            .expect("the VIP's table has a backend for every slot")
    };
    let nonce = [0xa1, 0xa2, 0xa3, 0xa4, 0xa5];
    let sid2 = encode_cid(2, nonce);
    let to4 = |port: u16, payload: &[u8]| {
        Pkt::new("198.18.0.1", "198.18.1.40", L4::udp(port, 443, payload))
    };
    let b2 = ip("198.18.2.42");
    let mut failures: Vec<String> = rows.iter().filter_map(|r| check(&mut dp, r)).collect();

    // 8. A removed backend's ID is deleted from QUIC_SERVERS: its packets
    //    fall back.
    dp.set_backends(&q4, &q4_backends[..2]).expect("backends");
    assert!(
        !dp.quic_servers().contains_key(&QuicServerKey {
            vip_id: q4_id,
            server_id: 3,
            _pad: 0
        }),
        "server ID 3 left in QUIC_SERVERS after its backend was removed"
    );
    let p = to4(47000, &short(&encode_cid(3, nonce)));
    let m = maglev(&dp, &q4, &p);
    let row = Row::dsr(
        "v4 server ID of a removed backend",
        &p,
        Reason::FwdQuicUnknownId,
        q4,
        m,
        true,
    );
    failures.extend(check(&mut dp, &row));
    // The client from row 1, moved to another address and port: still its
    // server.
    let moved = Pkt::new(
        &Ipv4Addr::new(198, 18, 0, 77).to_string(),
        "198.18.1.40",
        L4::udp(50123, 443, &short(&sid2)),
    );
    let row = Row::dsr(
        "v4 client moved: same server",
        &moved,
        Reason::FwdQuicServerId,
        q4,
        b2,
        false,
    );
    failures.extend(check(&mut dp, &row));

    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
