//! Packet fixtures for `VIP_DIRECT4`/`VIP_DIRECT6`, the direct-mapped
//! copies of `VIP_ADDRS*` the program finds a destination's VIPs in: a
//! slot owned by one address, a slot two VIP addresses share (the hash
//! map answers), a non-VIP address whose filter bit and slot are a VIP
//! address's, a slot held mid-write, the exact port before the all-ports
//! VIP, an address with more VIPs than its inline slots. The real balancer
//! run by the kernel through BPF_PROG_TEST_RUN, provisioned through
//! `Dataplane` as the daemon provisions it; each row states the verdict,
//! the exact output bytes and the exact counter changes, and the slot's
//! state after every change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, Map, MapData};
use hola_tests::{
    fixture::{
        self, PinDir, backend_mac, diff, expected_deltas, hex, pin_to_cpu0, require_root, run,
        snapshot,
    },
    packet::{L4, LB_MAC, Pkt, with_macs},
};
use lb_common::{
    AddrVips, Reason,
    flow::TCP_ACK,
    vip::{DIRECT_OWNED, DIRECT_SHARED, fold_v6, vip_direct_slot, vip_filter_bit},
};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Proto, VipAddr, VipSpec,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn backend(addr: IpAddr) -> BackendSpec {
    fixture::backend(&addr.to_string())
}

fn vip(addr: IpAddr, port: u16) -> VipAddr {
    VipAddr {
        addr,
        port,
        proto: Proto::Tcp,
    }
}

/// Adds a dsr VIP with one backend.
fn add(dp: &mut Dataplane, v: VipAddr, to: IpAddr) {
    dp.add_vip(VipSpec {
        vip: v,
        mode: Mode::Dsr,
        src_hash: false,
        table_size: 251,
        quic: false,
    })
    .expect("add VIP");
    dp.set_backends(&v, &[backend(to)]).expect("set backends");
}

/// Sends an ACK from a client to `dst:port`; it must be forwarded to `to`
/// (a new flow: nothing was recorded for this client port) with the MACs
/// rewritten and nothing else, and counted for `v` and `to` alone.
fn forwarded(dp: &mut Dataplane, name: &str, port: u16, v: VipAddr, to: IpAddr, sport: u16) {
    let client = if v.addr.is_ipv4() {
        "198.18.0.1"
    } else {
        "2001:db8::1"
    };
    let p = Pkt::new(client, &v.addr.to_string(), L4::tcp(sport, port, TCP_ACK));
    let input = p.bytes();
    let before = snapshot(dp);
    let (action, out) = run(dp.program().expect("program"), &input)
        .unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN failed: {e}"));
    assert_eq!(action, XDP_TX, "{name}: verdict");
    let want = with_macs(&input, backend_mac(to), LB_MAC);
    assert!(
        out == want,
        "{name}: output bytes differ\n got:\n{}\n want:\n{}",
        hex(&out),
        hex(&want)
    );
    assert_eq!(
        diff(&before, &snapshot(dp)),
        expected_deltas(input.len(), Reason::FwdNewFlow, Some(v), Some(to)),
        "{name}: counter changes"
    );
}

/// Sends an ACK to `dst:port`: it must pass untouched as not for a VIP.
fn passed(dp: &mut Dataplane, name: &str, dst: IpAddr, port: u16) {
    let client = if dst.is_ipv4() {
        "198.18.0.1"
    } else {
        "2001:db8::1"
    };
    let p = Pkt::new(client, &dst.to_string(), L4::tcp(40000, port, TCP_ACK));
    let input = p.bytes();
    let before = snapshot(dp);
    let (action, out) = run(dp.program().expect("program"), &input)
        .unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN failed: {e}"));
    assert_eq!(action, XDP_PASS, "{name}: verdict");
    assert_eq!(out, input, "{name}: a passed packet is not changed");
    assert_eq!(
        diff(&before, &snapshot(dp)),
        expected_deltas(input.len(), Reason::PassNotVip, None, None),
        "{name}: counter changes"
    );
}

fn slot4(a: Ipv4Addr) -> u32 {
    vip_direct_slot(u32::from_ne_bytes(a.octets()))
}

fn bit4(a: Ipv4Addr) -> u32 {
    vip_filter_bit(u32::from_ne_bytes(a.octets()))
}

/// Addresses of 198.18.0.0/15 from 198.18.1.0 on.
fn v4_range() -> impl Iterator<Item = Ipv4Addr> {
    (u32::from(Ipv4Addr::new(198, 18, 1, 0))..u32::from(Ipv4Addr::new(198, 20, 0, 0)))
        .map(Ipv4Addr::from)
}

#[test]
fn a_vip_address_is_found_in_its_direct_slot_or_in_the_hash_map() {
    require_root();
    pin_to_cpu0();
    let mut dp = Dataplane::load(DataplaneConfig::default())
        .expect("loading the balancer (the verifier must accept it)");

    // A: a VIP address; N: not a VIP, with A's filter bit (so the bitmap
    // lets it through) and so A's slot; B: another VIP address with A's
    // slot and another bit.
    let (a, n) = v4_range()
        .find_map(|a| {
            v4_range()
                .find(|n| *n > a && bit4(*n) == bit4(a))
                .map(|n| (a, n))
        })
        .expect("two addresses of 198.18.0.0/15 with one filter bit");
    let b = v4_range()
        .find(|b| slot4(*b) == slot4(a) && bit4(*b) != bit4(a))
        .expect("an address with A's slot and another bit");
    let (ia, ib, inn) = (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(n));
    let (to_a, to_b) = (
        IpAddr::from([198, 18, 200, 1]),
        IpAddr::from([198, 18, 200, 2]),
    );
    let (va, vb) = (vip(ia, 80), vip(ib, 80));

    add(&mut dp, va, to_a);
    assert_eq!(dp.vip_direct_state(ia), (DIRECT_OWNED, Some(ia)));
    forwarded(&mut dp, "A, its slot owned", 80, va, to_a, 41000);
    passed(&mut dp, "N, A's slot and bit, not a VIP", inn, 80);
    passed(&mut dp, "A, a port without a VIP", ia, 81);

    // A held mid-write: the hash map answers, the same.
    dp.vip_direct_hold(ia, true);
    forwarded(&mut dp, "A, its slot being written", 80, va, to_a, 41001);
    passed(&mut dp, "N, A's slot being written", inn, 80);
    dp.vip_direct_hold(ia, false);

    // B shares A's slot: both from the hash map.
    add(&mut dp, vb, to_b);
    assert_eq!(dp.vip_direct_state(ia), (DIRECT_SHARED, None));
    forwarded(&mut dp, "A, its slot shared", 80, va, to_a, 41002);
    forwarded(&mut dp, "B, its slot shared", 80, vb, to_b, 41002);
    passed(&mut dp, "N, a shared slot", inn, 80);

    // A removed: B owns the slot.
    dp.remove_vip(&va).expect("remove VIP A");
    assert_eq!(dp.vip_direct_state(ib), (DIRECT_OWNED, Some(ib)));
    forwarded(
        &mut dp,
        "B, owning the slot after A went",
        80,
        vb,
        to_b,
        41003,
    );
    passed(&mut dp, "A, no longer a VIP", ia, 80);

    // B removed: the slot is empty.
    dp.remove_vip(&vb).expect("remove VIP B");
    assert_eq!(dp.vip_direct_state(ib), (0, None));
    passed(&mut dp, "B, no longer a VIP", ib, 80);

    // The exact port before the all-ports VIP, and more VIPs at one
    // address than its inline slots hold (the rest from `VIPS`).
    let c = IpAddr::from([198, 18, 1, 250]);
    let all = vip(c, 0);
    add(&mut dp, all, IpAddr::from([198, 18, 201, 100]));
    let ports: Vec<u16> = (80..90).collect();
    for (i, p) in ports.iter().enumerate() {
        add(
            &mut dp,
            vip(c, *p),
            IpAddr::from([198, 18, 201, i as u8 + 1]),
        );
    }
    assert_eq!(dp.vip_direct_state(c), (DIRECT_OWNED, Some(c)));
    for (i, p) in ports.iter().enumerate() {
        forwarded(
            &mut dp,
            &format!("C:{p}, one of 10 exact-port VIPs and an all-ports one"),
            *p,
            vip(c, *p),
            IpAddr::from([198, 18, 201, i as u8 + 1]),
            42000,
        );
    }
    forwarded(
        &mut dp,
        "C:91, the all-ports VIP",
        91,
        all,
        IpAddr::from([198, 18, 201, 100]),
        42000,
    );

    // IPv6: owned, and shared with a second address.
    let x6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x60);
    let s6 = |a: Ipv6Addr| vip_direct_slot(fold_v6(&a.octets()));
    let y6 = (1u16..)
        .map(|i| Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, i, 0x60))
        .find(|y| s6(*y) == s6(x6))
        .expect("another IPv6 address with X's slot");
    let (vx, vy) = (vip(IpAddr::V6(x6), 80), vip(IpAddr::V6(y6), 80));
    let (to_x, to_y) = (
        IpAddr::from([0x2001, 0xdb8, 2, 0, 0, 0, 0, 1]),
        IpAddr::from([0x2001, 0xdb8, 2, 0, 0, 0, 0, 2]),
    );
    add(&mut dp, vx, to_x);
    assert_eq!(
        dp.vip_direct_state(IpAddr::V6(x6)),
        (DIRECT_OWNED, Some(IpAddr::V6(x6)))
    );
    forwarded(&mut dp, "IPv6 X, its slot owned", 80, vx, to_x, 43000);
    passed(
        &mut dp,
        "IPv6 Y, X's slot, not a VIP yet",
        IpAddr::V6(y6),
        80,
    );
    add(&mut dp, vy, to_y);
    assert_eq!(dp.vip_direct_state(IpAddr::V6(x6)), (DIRECT_SHARED, None));
    forwarded(&mut dp, "IPv6 X, its slot shared", 80, vx, to_x, 43001);
    forwarded(&mut dp, "IPv6 Y, its slot shared", 80, vy, to_y, 43001);
}

#[test]
fn the_direct_slots_are_rebuilt_from_the_hash_maps_at_load() {
    require_root();
    pin_to_cpu0();
    let dir = PinDir::new("hola-test-vip-direct");
    let cfg = DataplaneConfig::default();
    let a = IpAddr::from([198, 18, 1, 77]);
    let to = IpAddr::from([198, 18, 202, 1]);
    {
        let mut dp = Dataplane::load_pinned(cfg.clone(), &dir.0).expect("loading pinned");
        add(&mut dp, vip(a, 80), to);
        assert_eq!(dp.vip_direct_state(a), (DIRECT_OWNED, Some(a)));
        // A previous daemon that died mid-write leaves the slot odd.
        dp.vip_direct_hold(a, true);
    }
    let mut dp = Dataplane::load_pinned(cfg, &dir.0).expect("loading the pinned maps again");
    assert_eq!(dp.vip_direct_state(a), (DIRECT_OWNED, Some(a)));
    forwarded(&mut dp, "A after a reload", 80, vip(a, 80), to, 44000);
    dp.vip_direct_hold(a, true);
    forwarded(&mut dp, "A, held after a reload", 80, vip(a, 80), to, 44001);
    dp.vip_direct_hold(a, false);

    // Which of the two the program read: with A's `VIP_ADDRS4` entry taken
    // away behind the daemon's back, A is still found (its slot), until
    // the slot is held mid-write (then the hash map answers: no VIP).
    let path = dir.0.join("maps").join("VIP_ADDRS4");
    let mut addrs: HashMap<MapData, u32, AddrVips> = HashMap::try_from(Map::HashMap(
        MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    ))
    .expect("VIP_ADDRS4 is a hash map of AddrVips");
    let k = u32::from_ne_bytes([198, 18, 1, 77]);
    let entry = addrs.get(&k, 0).expect("A's VIP_ADDRS4 entry");
    addrs.remove(&k).expect("removing A's VIP_ADDRS4 entry");
    forwarded(&mut dp, "A, from its slot alone", 80, vip(a, 80), to, 44002);
    dp.vip_direct_hold(a, true);
    passed(&mut dp, "A held, from the hash map that lacks it", a, 80);
    dp.vip_direct_hold(a, false);
    forwarded(&mut dp, "A, from its slot again", 80, vip(a, 80), to, 44003);
    addrs.insert(k, entry, 0).expect("restoring A's entry");
    drop(dp);
    lb_userspace::dataplane::unpin_all(&dir.0).expect("unpinning");
}

/// The sequence lock under a real race: a thread rewrites an address's
/// slot as fast as it can, alternating two versions (port 80 a VIP of
/// backends X; port 80 no VIP, port 81 one of backend Y), while this thread
/// runs SYNs to port 80 through the program. Each version alone gives
/// "forwarded to an X backend" or "passed"; a slot read half from one and
/// half from the other can give port 80 with port 81's VIP, "forwarded to
/// Y", which must never happen.
#[test]
fn a_slot_rewritten_while_packets_read_it_is_never_read_torn() {
    require_root();
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 1024,
        ..Default::default()
    })
    .expect("loading the balancer (the verifier must accept it)");
    let a = Ipv4Addr::new(198, 18, 1, 90);
    let (vx, vy) = (vip(IpAddr::V4(a), 80), vip(IpAddr::V4(a), 81));
    let xs = [
        IpAddr::from([198, 18, 203, 1]),
        IpAddr::from([198, 18, 203, 2]),
    ];
    let y = IpAddr::from([198, 18, 203, 9]);
    dp.add_vip(VipSpec {
        vip: vx,
        mode: Mode::Dsr,
        src_hash: false,
        table_size: 251,
        quic: false,
    })
    .expect("add VIP X");
    dp.set_backends(&vx, &[backend(xs[0]), backend(xs[1])])
        .expect("set backends");
    add(&mut dp, vy, y);
    let mut w = dp.vip_direct_writer4().expect("mapping VIP_DIRECT4");
    let both = w.read(a).expect("the address owns its slot");
    assert_eq!(both.count, 2);
    let at = |port: u16| {
        both.slots[..2]
            .iter()
            .find(|s| s.port == port.to_be())
            .copied()
            .expect("the VIP's inline slot")
    };
    let mut v1 = both;
    v1.count = 1;
    v1.slots[0] = at(80);
    v1.slots[1] = Default::default();
    let mut v2 = v1;
    v2.slots[0] = at(81);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut writes = 0u64;
            let t = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && t.elapsed() < std::time::Duration::from_secs(30)
            {
                w.write(a, &v1);
                w.write(a, &v2);
                writes += 2;
            }
            w.write(a, &both);
            writes
        })
    };
    let x_macs: Vec<[u8; 6]> = xs.iter().map(|x| backend_mac(*x)).collect();
    let (mut fwd, mut pass, mut bad) = (0u64, 0u64, Vec::new());
    let t = std::time::Instant::now();
    for i in 0..100_000u32 {
        let p = Pkt::new(
            "198.18.0.1",
            "198.18.1.90",
            L4::tcp(1024 + (i % 60_000) as u16, 80, lb_common::flow::TCP_SYN),
        );
        let (action, out) = run(dp.program().expect("program"), &p.bytes())
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e}"));
        match action {
            XDP_TX if x_macs.iter().any(|m| out[..6] == m[..]) => fwd += 1,
            XDP_PASS => pass += 1,
            _ => bad.push((i, action, hex(&out[..12]))),
        }
        if t.elapsed() > std::time::Duration::from_secs(20) {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().expect("the writer thread");
    println!(
        "{} packets in {:?}: {fwd} forwarded to X, {pass} passed, {} otherwise; {writes} slot writes",
        fwd + pass + bad.len() as u64,
        t.elapsed(),
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "{} packets read a torn slot (first: {:?})",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(
        fwd > 0 && pass > 0,
        "the race did not happen: every packet saw one version ({fwd} forwarded, {pass} passed)"
    );
}
