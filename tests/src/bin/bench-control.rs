//! `cargo xtask bench control`: what the control plane costs and how little
//! it disturbs. Maglev table build time for M = 65537 and 655373 with
//! N = 10, 100 and 1000 backends; the share of flows that move when one
//! backend is added or removed, by hashing synthetic flows through the
//! table read back from the kernel; the time from a backend add (the map
//! writes the daemon makes) to the first packet the real program sends to
//! the new backend (through BPF_PROG_TEST_RUN). Writes
//! target/bench/control.json and prints a table (docs/benchmarks.md).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use aya::programs::{TestRun as _, TestRunOptions};
use hola_tests::{
    bench::{machine, median},
    packet::{L4, LB_MAC, Pkt, TCP_SYN},
};
use lb_common::{FAMILY_V4, FlowKey, PROTO_TCP, hash::flow_hash};
use lb_userspace::{
    dataplane::{BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec},
    maglev::{self, MaglevBackend},
};
use serde_json::json;

struct Args {
    rounds: usize,
    flows: usize,
    out: String,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 7,
        flows: 1_000_000,
        out: "target/bench/control.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--rounds" => a.rounds = v().parse().expect("--rounds N"),
            "--flows" => a.flows = v().parse().expect("--flows N"),
            "--out" => a.out = v(),
            "--smoke" => {
                a.rounds = 1;
                a.flows = 20_000;
            }
            other => {
                panic!("unknown argument {other}; use --rounds N --flows N --out FILE or --smoke")
            }
        }
    }
    a
}

/// Backend `i` (0-based) of a pool: an address in 198.18.0.0/15.
fn addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 19, (i / 250) as u8, (i % 250 + 1) as u8))
}

fn mac_of(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0x0b, (i >> 8) as u8, i as u8]
}

fn spec(i: usize) -> BackendSpec {
    BackendSpec {
        addr: addr(i),
        weight: 1,
        up: true,
        port: 0,
        nexthop: Some(Nexthop {
            dmac: mac_of(i),
            smac: LB_MAC,
            ifindex: 0,
        }),
        server_id: 0,
    }
}

/// Synthetic flow `i` to 198.18.1.1:80.
fn flow(i: usize) -> FlowKey {
    let mut k = FlowKey {
        proto: PROTO_TCP,
        family: FAMILY_V4,
        ..Default::default()
    };
    let src = Ipv4Addr::new(198, 18, 128 + ((i >> 16) % 64) as u8, (i >> 8) as u8);
    k.src[..4].copy_from_slice(&src.octets());
    k.dst[..4].copy_from_slice(&[198, 18, 1, 1]);
    k.sport = (1024 + (i % 256) as u16 * 200 + (i >> 22) as u16).to_be();
    k.dport = 80u16.to_be();
    k
}

/// Share of `flows` flows whose backend differs between two tables, and
/// the share that moved although their old backend is in both.
fn moved(before: &[Option<IpAddr>], after: &[Option<IpAddr>], flows: usize) -> (f64, f64) {
    let m = before.len() as u32;
    let kept: std::collections::BTreeSet<IpAddr> = after.iter().flatten().copied().collect();
    let (mut all, mut needless) = (0usize, 0usize);
    for i in 0..flows {
        let slot = (flow_hash(&flow(i), false) % m) as usize;
        if before[slot] != after[slot] {
            all += 1;
            if before[slot].is_some_and(|b| kept.contains(&b))
                && after[slot].is_some_and(|a| before.contains(&Some(a)))
            {
                needless += 1;
            }
        }
    }
    (all as f64 / flows as f64, needless as f64 / flows as f64)
}

fn main() {
    let a = args();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "bench-control loads XDP programs: run it as root");

    // 1. Maglev build time (pure userspace, the same code the daemon runs).
    let mut builds = Vec::new();
    for m in [65_537u32, 655_373] {
        for n in [10usize, 100, 1000] {
            let backends: Vec<MaglevBackend> = (0..n)
                .map(|i| MaglevBackend {
                    id: i as u32 + 1,
                    key: maglev::backend_key(addr(i), 80),
                    weight: 1,
                })
                .collect();
            let mut ms: Vec<f64> = (0..a.rounds.max(3))
                .map(|_| {
                    let t = Instant::now();
                    let table = maglev::build(&backends, m).expect("build");
                    let el = t.elapsed().as_secs_f64() * 1e3;
                    assert_eq!(table.len(), m as usize);
                    el
                })
                .collect();
            let med = median(&mut ms);
            println!(
                "maglev build  M={m:<7} N={n:<5} {med:>8.2} ms  (min {:.2}, max {:.2})",
                ms[0],
                ms[ms.len() - 1]
            );
            builds.push(json!({"m": m, "n": n, "median_ms": med, "min_ms": ms[0], "max_ms": ms[ms.len() - 1]}));
        }
    }

    // 2. Flows moved, through tables read back from the kernel.
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 65_536,
        nat_capacity: 1024,
        ..Default::default()
    })
    .expect("loading the balancer");
    let vip = VipAddr {
        addr: "198.18.1.1".parse().expect("vip"),
        port: 80,
        proto: Proto::Tcp,
    };
    dp.add_vip(VipSpec {
        vip,
        mode: Mode::Dsr,
        src_hash: false,
        table_size: 65_537,
        quic: false,
    })
    .expect("add VIP");
    let mut disruption = Vec::new();
    for n in [10usize, 100] {
        let base: Vec<BackendSpec> = (0..n).map(spec).collect();
        dp.set_backends(&vip, &base).expect("backends");
        let t0 = dp.kernel_table(&vip).expect("table");
        let mut plus = base.clone();
        plus.push(spec(n));
        dp.set_backends(&vip, &plus).expect("add one");
        let t_add = dp.kernel_table(&vip).expect("table");
        dp.set_backends(&vip, &base[1..]).expect("remove one");
        let t_del = dp.kernel_table(&vip).expect("table");
        let (add_all, add_needless) = moved(&t0, &t_add, a.flows);
        let (del_all, del_needless) = moved(&t0, &t_del, a.flows);
        println!(
            "flows moved   N={n:<4} add one: {:.2}% ({:.3}% between unchanged backends)   remove one: {:.2}% ({:.3}%)",
            add_all * 100.0,
            add_needless * 100.0,
            del_all * 100.0,
            del_needless * 100.0
        );
        disruption.push(json!({
            "n": n, "m": 65_537, "flows": a.flows,
            "add_moved": add_all, "add_moved_between_unchanged": add_needless,
            "remove_moved": del_all, "remove_moved_between_unchanged": del_needless,
        }));
    }

    // 3. From a backend add to the first packet the program sends to it.
    let mut add_us = Vec::new();
    let mut counter = 0usize;
    for round in 0..a.rounds {
        let base: Vec<BackendSpec> = (0..10).map(spec).collect();
        dp.set_backends(&vip, &base).expect("backends");
        let new = 10 + round;
        let mut plus = base.clone();
        plus.push(spec(new));
        // Packets of new flows, built before the clock starts.
        let inputs: Vec<Vec<u8>> = (0..2000)
            .map(|i| {
                let k = counter + i;
                let src = format!("198.18.{}.{}", 192 + (k >> 16) % 32, (k >> 8) % 256);
                Pkt::new(
                    &src,
                    "198.18.1.1",
                    L4::tcp(1024 + (k % 256) as u16 * 200, 80, TCP_SYN),
                )
                .bytes()
            })
            .collect();
        counter += 2000;
        let mut out = vec![0u8; 2048];
        let t = Instant::now();
        dp.set_backends(&vip, &plus).expect("add");
        let prog = dp.program_ref();
        let mut first = None;
        for input in &inputs {
            prog.test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
            if out[..6] == mac_of(new) {
                first = Some(t.elapsed());
                break;
            }
        }
        let first = first.expect("one of 2000 new flows reaches the new backend");
        add_us.push(first.as_secs_f64() * 1e6);
    }
    let mut sorted = add_us.clone();
    let add_med = median(&mut sorted);
    println!(
        "backend add → first packet to it: {add_med:.0} µs (median of {} rounds; min {:.0}, max {:.0})",
        add_us.len(),
        sorted[0],
        sorted[sorted.len() - 1]
    );

    let mut doc = machine();
    doc.insert("rounds".into(), a.rounds.into());
    doc.insert("maglev_build".into(), builds.into());
    doc.insert("flows_moved".into(), disruption.into());
    doc.insert(
        "add_to_first_packet_us".into(),
        json!({"median": add_med, "rounds": add_us,
            "method": "Dataplane::set_backends (the daemon's map writes for `hola backend add`), then new-flow packets through BPF_PROG_TEST_RUN until one goes to the new backend; the API/CLI round trip is not included"}),
    );
    if let Some(dir) = std::path::Path::new(&a.out).parent() {
        std::fs::create_dir_all(dir).expect("create output directory");
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&doc).expect("json")).expect("write JSON");
    println!("written to {}", a.out);
}
