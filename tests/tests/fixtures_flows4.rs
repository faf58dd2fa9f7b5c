//! Packet fixtures for the two flow tables: IPv4 flows recorded in and
//! found in `FLOWS4` (16-byte keys), IPv6 flows in `FLOWS`. The real
//! balancer run by the kernel through BPF_PROG_TEST_RUN, provisioned
//! through `Dataplane` as the daemon provisions it; each row states the
//! input, the verdict, the exact output bytes (or, for a tunnel, that an
//! established packet leaves exactly as its flow's first did), the exact
//! counter changes, and afterwards the exact contents of both tables.

use std::{net::IpAddr, time::Duration};

use hola_tests::{
    fixture::{
        self, backend_mac, diff, expected_deltas, hex, ip, pin_to_cpu0, require_root, run, snapshot,
    },
    packet::{L4, LB_MAC, Pkt, with_macs},
};
use lb_common::{
    FlowKey4, FlowValue, Reason,
    flow::{TCP_ACK, TCP_SYN},
    hash::flow_hash,
};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, FlowTables, Mode, Proto, VipAddr, VipSpec,
};

const XDP_TX: u32 = 3;

fn backend(addr: &str, weight: u32) -> BackendSpec {
    BackendSpec {
        weight,
        ..fixture::backend(addr)
    }
}

fn vip(addr: &str) -> VipAddr {
    VipAddr {
        addr: ip(addr),
        port: 80,
        proto: Proto::Tcp,
    }
}

/// Runs one packet: its verdict must be XDP_TX, its output `want` (or
/// anything, for `None`), and its counters those of `reason` for `vip`
/// and backend `to`. Returns the output.
fn forward(
    dp: &mut Dataplane,
    name: &str,
    p: &Pkt,
    want: Option<&[u8]>,
    reason: Reason,
    v: VipAddr,
    to: IpAddr,
) -> Vec<u8> {
    let input = p.bytes();
    let before = snapshot(dp);
    let (action, out) = run(dp.program().expect("program"), &input)
        .unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN failed: {e}"));
    assert_eq!(action, XDP_TX, "{name}: verdict");
    if let Some(want) = want {
        assert!(
            out == want,
            "{name}: output bytes differ\n got:\n{}\n want:\n{}",
            hex(&out),
            hex(want)
        );
    }
    assert_eq!(
        diff(&before, &snapshot(dp)),
        expected_deltas(input.len(), reason, Some(v), Some(to)),
        "{name}: counter changes"
    );
    out
}

/// The flow-table value the program records for `p` sent to `to` of `v`.
fn value(dp: &Dataplane, v: &VipAddr, to: IpAddr, p: &Pkt) -> FlowValue {
    FlowValue {
        backend_id: dp.backend_id(v, to).expect("the backend has an id"),
        hash: flow_hash(&p.flow_key(), false),
    }
}

/// Both tables' exact contents, sorted by key.
fn tables(dp: &Dataplane) -> FlowTables {
    let (mut v4, mut v6) = dp.flow_tables().expect("reading FLOWS4 and FLOWS");
    v4.sort_by_key(|(k, _)| (k.src, k.dst, k.sport, k.dport, k.proto));
    v6.sort_by_key(|(k, _)| (k.src, k.dst, k.sport, k.dport, k.proto));
    (v4, v6)
}

#[test]
fn ipv4_flows_in_flows4_ipv6_flows_in_flows() {
    require_root();
    pin_to_cpu0();
    let cfg = DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        // A non-SYN miss after a table change goes where the new table
        // says (no previous table kept).
        table_grace: Duration::ZERO,
        ..Default::default()
    };
    let mut dp = Dataplane::load(cfg).expect("loading the balancer (the verifier must accept it)");
    let (dsr4, tun4, dsr6) = (
        vip("198.18.1.60"),
        vip("198.18.1.61"),
        vip("2001:db8:1::60"),
    );
    for (v, mode) in [(dsr4, Mode::Dsr), (tun4, Mode::Tunnel), (dsr6, Mode::Dsr)] {
        dp.add_vip(VipSpec {
            vip: v,
            mode,
            src_hash: false,
            table_size: 1021,
            quic: false,
        })
        .expect("add VIP");
    }
    dp.set_backends(
        &dsr4,
        &[backend("198.18.2.61", 1), backend("198.18.2.62", 1)],
    )
    .expect("set backends");
    dp.set_backends(&tun4, &[backend("198.18.3.61", 1)])
        .expect("set backends");
    dp.set_backends(&dsr6, &[backend("2001:db8:2::61", 1)])
        .expect("set backends");
    let maglev = |dp: &Dataplane, v: &VipAddr, p: &Pkt| -> IpAddr {
        dp.maglev_backend(v, &p.flow_key())
            .expect("the VIP's table has a backend for every slot")
    };
    let client = "198.18.0.1";
    let ack4 = Pkt::new(client, "198.18.1.60", L4::tcp(40000, 80, TCP_ACK));
    let key4 = FlowKey4 {
        src: [198, 18, 0, 1],
        dst: [198, 18, 1, 60],
        sport: 40000u16.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    };
    assert_eq!(FlowKey4::of(&ack4.flow_key()), key4);

    // A SYN records nothing, in either table.
    let syn4 = Pkt::new(client, "198.18.1.60", L4::tcp(40000, 80, TCP_SYN));
    let x = maglev(&dp, &dsr4, &syn4);
    forward(
        &mut dp,
        "dsr IPv4 SYN: where the table says, not recorded",
        &syn4,
        Some(&with_macs(&syn4.bytes(), backend_mac(x), LB_MAC)),
        Reason::FwdSyn,
        dsr4,
        x,
    );
    assert_eq!(tables(&dp), (vec![], vec![]), "a SYN records no flow");

    // Its ACK is recorded in FLOWS4, nothing in FLOWS.
    forward(
        &mut dp,
        "dsr IPv4 ACK: a new flow",
        &ack4,
        Some(&with_macs(&ack4.bytes(), backend_mac(x), LB_MAC)),
        Reason::FwdNewFlow,
        dsr4,
        x,
    );
    let v_ack4 = value(&dp, &dsr4, x, &ack4);
    assert_eq!(tables(&dp), (vec![(key4, v_ack4)], vec![]));
    assert_eq!(dp.flow_entry(&ack4.flow_key()), Some(v_ack4));

    // The table changes: Maglev sends the flow elsewhere, its FLOWS4 entry
    // keeps it on its backend.
    let y = ip("198.18.2.63");
    dp.set_backends(
        &dsr4,
        &[backend(&x.to_string(), 1), backend("198.18.2.63", 1000)],
    )
    .expect("set backends");
    assert_eq!(
        maglev(&dp, &dsr4, &ack4),
        y,
        "after the change Maglev must send the flow elsewhere for this row to mean anything"
    );
    forward(
        &mut dp,
        "dsr IPv4 established after a table change: its backend from FLOWS4",
        &ack4,
        Some(&with_macs(&ack4.bytes(), backend_mac(x), LB_MAC)),
        Reason::FwdEstablished,
        dsr4,
        x,
    );
    assert_eq!(
        tables(&dp),
        (vec![(key4, v_ack4)], vec![]),
        "a hit changes nothing"
    );

    // A second IPv4 flow after the change: the new table, recorded beside.
    let other4 = Pkt::new(client, "198.18.1.60", L4::tcp(40001, 80, TCP_ACK));
    let z = maglev(&dp, &dsr4, &other4);
    forward(
        &mut dp,
        "dsr IPv4 second flow: the new table",
        &other4,
        Some(&with_macs(&other4.bytes(), backend_mac(z), LB_MAC)),
        Reason::FwdNewFlow,
        dsr4,
        z,
    );
    let key_other4 = FlowKey4 {
        sport: 40001u16.to_be(),
        ..key4
    };
    let v_other4 = value(&dp, &dsr4, z, &other4);
    assert_eq!(
        tables(&dp),
        (vec![(key4, v_ack4), (key_other4, v_other4)], vec![])
    );

    // IPv6: recorded in FLOWS, FLOWS4 unchanged.
    let ack6 = Pkt::new("2001:db8::1", "2001:db8:1::60", L4::tcp(40000, 80, TCP_ACK));
    let b6 = ip("2001:db8:2::61");
    let want6 = with_macs(&ack6.bytes(), backend_mac(b6), LB_MAC);
    forward(
        &mut dp,
        "dsr IPv6 ACK: a new flow",
        &ack6,
        Some(&want6),
        Reason::FwdNewFlow,
        dsr6,
        b6,
    );
    let v_ack6 = value(&dp, &dsr6, b6, &ack6);
    let v4_rows = vec![(key4, v_ack4), (key_other4, v_other4)];
    assert_eq!(
        tables(&dp),
        (v4_rows.clone(), vec![(ack6.flow_key(), v_ack6)])
    );
    forward(
        &mut dp,
        "dsr IPv6 established: from FLOWS",
        &ack6,
        Some(&want6),
        Reason::FwdEstablished,
        dsr6,
        b6,
    );
    assert_eq!(dp.flow_entry(&ack6.flow_key()), Some(v_ack6));

    // Tunnel: the first packet records the flow in FLOWS4; the next is
    // found there and leaves byte for byte as the first did (the same
    // backend, the outer source from the same recorded hash).
    let t4 = Pkt::new(client, "198.18.1.61", L4::tcp(40002, 80, TCP_ACK));
    let bt = ip("198.18.3.61");
    let first = forward(
        &mut dp,
        "tunnel IPv4 ACK: a new flow",
        &t4,
        None,
        Reason::FwdNewFlow,
        tun4,
        bt,
    );
    assert_eq!(
        &first[14 + 16..14 + 20],
        &[198, 18, 3, 61],
        "the outer destination is the backend"
    );
    let v_t4 = value(&dp, &tun4, bt, &t4);
    let key_t4 = FlowKey4::of(&t4.flow_key());
    let mut v4_rows = v4_rows;
    v4_rows.push((key_t4, v_t4));
    v4_rows.sort_by_key(|(k, _)| (k.src, k.dst, k.sport, k.dport, k.proto));
    assert_eq!(
        tables(&dp),
        (v4_rows.clone(), vec![(ack6.flow_key(), v_ack6)])
    );
    forward(
        &mut dp,
        "tunnel IPv4 established: from FLOWS4",
        &t4,
        Some(&first),
        Reason::FwdEstablished,
        tun4,
        bt,
    );

    // Userspace's listing has every flow, IPv4 keys widened back.
    let mut all = dp.flow_entries().expect("flow entries");
    all.sort_by_key(|(k, _)| (k.family, k.src, k.dst, k.sport, k.dport));
    let mut want: Vec<_> = v4_rows.iter().map(|(k, v)| (k.widen(), *v)).collect();
    want.push((ack6.flow_key(), v_ack6));
    want.sort_by_key(|(k, _)| (k.family, k.src, k.dst, k.sport, k.dport));
    assert_eq!(all, want);
}
