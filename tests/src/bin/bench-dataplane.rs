//! `cargo xtask bench dataplane`: what each path of the balancer costs per
//! packet, measured by the kernel through BPF_PROG_TEST_RUN.
//!
//! Method (docs/benchmarks.md): every call runs the program once
//! (repeat = 1, so a rewriting program never re-processes its own output);
//! the kernel's per-call duration is averaged over many calls; the same
//! measurement of a `return XDP_PASS` program is subtracted. A MAC-swap
//! XDP_TX program is measured beside it. Contenders alternate within each
//! round; the report gives the median of the rounds and their spread.

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use hola_tests::{
    bench::{machine, median},
    packet::{L4, LB_MAC, Pkt, TCP_ACK, TCP_SYN},
};
use lb_common::trace::{TRACE_M_SRC, TraceFilter};
use lb_userspace::{
    dataplane::{
        BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec,
        possible_cpus,
    },
    programs,
};
use serde_json::json;

/// Builds the input packet of call `i`.
type Maker<'a> = Box<dyn FnMut(usize) -> Vec<u8> + 'a>;

struct Args {
    rounds: usize,
    calls: usize,
    flow_capacity_per_cpu: u32,
    out: String,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 5,
        calls: 100_000,
        flow_capacity_per_cpu: 4_000_000,
        out: "target/bench/dataplane.json".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--rounds" => a.rounds = v().parse().expect("--rounds N"),
            "--calls" => a.calls = v().parse().expect("--calls N"),
            "--flows" => a.flow_capacity_per_cpu = v().parse().expect("--flows N"),
            "--out" => a.out = v(),
            "--smoke" => {
                a.rounds = 1;
                a.calls = 2_000;
                a.flow_capacity_per_cpu = 65_536;
            }
            other => panic!(
                "unknown argument {other}; use --rounds N --calls N --flows N --out FILE or --smoke"
            ),
        }
    }
    a
}

/// Mean kernel-measured ns per call over `inputs`, one call per input.
fn measure(prog: &Xdp, inputs: &mut dyn FnMut(usize) -> Vec<u8>, calls: usize) -> f64 {
    let mut out = vec![0u8; 2048];
    let mut total = 0u128;
    for i in 0..calls {
        let input = inputs(i);
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        total += r.duration.as_nanos();
    }
    total as f64 / calls as f64
}

fn backend(addr: IpAddr) -> BackendSpec {
    BackendSpec {
        addr,
        weight: 1,
        up: true,
        port: 0,
        nexthop: Some(Nexthop {
            dmac: [2, 0, 0, 0, 0xb, 1],
            smac: LB_MAC,
            ifindex: 0,
        }),
        server_id: 0,
    }
}

/// An IPv4 TCP packet to an address that is no VIP.
fn not_vip_bytes() -> Vec<u8> {
    Pkt::new("198.18.0.1", "198.18.9.9", L4::tcp(40000, 80, TCP_ACK)).bytes()
}

/// A packet from a distinct client for call `i` (new flows).
fn fresh(dst: &str, i: usize, flags: u8) -> Vec<u8> {
    let src = format!("198.18.{}.{}", 128 + (i >> 16) % 64, (i >> 8) % 256);
    Pkt::new(
        &src,
        dst,
        L4::tcp(1024 + (i % 256) as u16 * 200 + (i >> 24) as u16, 80, flags),
    )
    .bytes()
}

/// A data plane loaded with `cfg` and one dsr VIP, 198.18.1.1:80/tcp, of
/// 10 backends (a Maglev table of 65,537 slots); `what` names it in errors.
fn one_dsr_vip(cfg: DataplaneConfig, what: &str) -> Dataplane {
    let mut dp =
        Dataplane::load(cfg).unwrap_or_else(|e| panic!("loading the {what} balancer: {e}"));
    let vip = VipAddr {
        addr: "198.18.1.1".parse().expect("vip"),
        port: 80,
        proto: Proto::Tcp,
    };
    dp.add_vip(VipSpec {
        vip,
        mode: Mode::Dsr,
        src_hash: false,
        table_size: 65537,
        quic: false,
    })
    .expect("add VIP");
    let bs: Vec<_> = (1..=10)
        .map(|i| backend(format!("198.18.2.{i}").parse().expect("backend")))
        .collect();
    dp.set_backends(&vip, &bs).expect("backends");
    dp
}

/// The three VIPs (dsr, tunnel, IPv6 dsr) of 10 backends each that the
/// established paths run through.
fn provision(dp: &mut Dataplane) {
    let vips = [
        ("198.18.1.1", Mode::Dsr, "198.18.2."),
        ("198.18.1.2", Mode::Tunnel, "198.18.3."),
        ("2001:db8:1::1", Mode::Dsr, "2001:db8:2::"),
    ];
    for (addr, mode, prefix) in vips {
        let vip = VipAddr {
            addr: addr.parse().expect("vip"),
            port: 80,
            proto: Proto::Tcp,
        };
        dp.add_vip(VipSpec {
            vip,
            mode,
            src_hash: false,
            table_size: 65537,
            quic: false,
        })
        .expect("add VIP");
        let bs: Vec<_> = (1..=10)
            .map(|i| backend(format!("{prefix}{i}").parse().expect("backend")))
            .collect();
        dp.set_backends(&vip, &bs).expect("backends");
    }
}

/// Flow-table entries per CPU of the trace-hook comparison's two balancers.
const HOOKS_FLOWS: u32 = 65_536;

/// The paths measured with `hola trace`'s hooks (no trace on) and without
/// them.
const HOOK_PATHS: [&str; 4] = [
    "not_a_vip",
    "established_dsr",
    "established_tunnel",
    "established_ipv6",
];

/// Two balancers loaded and provisioned alike through `Dataplane`: the
/// object the daemon runs (its trace hooks in, `TRACE_FILTER` off) and the
/// one built with lb-ebpf's `no-trace` feature (no hooks).
struct HookPair {
    hooks: Dataplane,
    none: Dataplane,
}

impl HookPair {
    fn load() -> Self {
        let load = |object: &[u8], what: &str| {
            let mut dp = Dataplane::load_object(
                DataplaneConfig {
                    flow_capacity_per_cpu: HOOKS_FLOWS,
                    new_flow_rate: 0,
                    ..Default::default()
                },
                object,
            )
            .unwrap_or_else(|e| panic!("loading the balancer {what}: {e}"));
            provision(&mut dp);
            dp.set_trace_filter(&TraceFilter::default())
                .expect("TRACE_FILTER");
            dp
        };
        Self {
            hooks: load(programs::HOLA, "with its trace hooks"),
            none: load(programs::HOLA_NO_TRACE, "built without trace hooks"),
        }
    }

    /// One round: each path of `HOOK_PATHS` measured with hooks and
    /// without, back to back, the order swapped every other round so that
    /// neither build always runs first. Returns [with hooks ns, without ns]
    /// per path, in `HOOK_PATHS`' order.
    fn round(&self, round: usize, calls: usize, packet: &dyn Fn(&str) -> Vec<u8>) -> Vec<[f64; 2]> {
        HOOK_PATHS
            .iter()
            .map(|name| {
                let input = packet(name);
                let m = |dp: &Dataplane, calls| {
                    measure(dp.program_ref(), &mut |_| input.clone(), calls)
                };
                if round == 0 {
                    // The first packet of an established path makes its
                    // flow-table entry: made here, outside the measurement.
                    m(&self.hooks, 1);
                    m(&self.none, 1);
                }
                let m = |dp: &Dataplane| m(dp, calls);
                if round.is_multiple_of(2) {
                    let h = m(&self.hooks);
                    [h, m(&self.none)]
                } else {
                    let n = m(&self.none);
                    [m(&self.hooks), n]
                }
            })
            .collect()
    }
}

/// Median, smallest and largest round of `v`.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    let med = median(&mut s);
    (med, s[0], s[s.len() - 1])
}

/// The comparison's JSON: per path, each build's rounds and median (and
/// net of `pass`, the `return XDP_PASS` median), the median of the rounds'
/// differences (with hooks - without) and the verdict. The rule: the hooks
/// are within noise when |median difference| is at most the larger of the
/// two builds' spreads (largest - smallest round); one round has no spread,
/// so no verdict (null).
fn hooks_json(rounds: &[Vec<[f64; 2]>], pass: f64) -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for (i, name) in HOOK_PATHS.iter().enumerate() {
        let side = |k: usize| -> Vec<f64> { rounds.iter().map(|r| r[i][k]).collect() };
        let (h, n) = (side(0), side(1));
        let diffs: Vec<f64> = h.iter().zip(&n).map(|(a, b)| a - b).collect();
        let (diff, _, _) = summary(&diffs);
        let build = |v: &[f64]| {
            let (med, lo, hi) = summary(v);
            json!({"median_ns": med, "net_ns": med - pass, "min_ns": lo, "max_ns": hi, "spread_ns": hi - lo, "rounds": v})
        };
        let (hj, nj) = (build(&h), build(&n));
        let noise = hj["spread_ns"]
            .as_f64()
            .unwrap_or(0.0)
            .max(nj["spread_ns"].as_f64().unwrap_or(0.0));
        let within = (rounds.len() > 1).then_some(diff.abs() <= noise);
        paths.insert(
            (*name).into(),
            json!({"hooks": hj, "none": nj, "diff_ns": diff, "diff_rounds": diffs, "noise_ns": noise, "within_noise": within}),
        );
    }
    json!({
        "what": "the balancer with `hola trace`'s hooks and no trace on, against the same program built without them (lb-ebpf's `no-trace` feature)",
        "flow_capacity_per_cpu": HOOKS_FLOWS,
        "rule": "within noise when |median over rounds of (with hooks - without)| <= max(spread of either build's rounds), spread = largest - smallest round; no verdict from one round",
        "paths": paths,
    })
}

/// Flow-table entries per CPU of the full-table case.
const FULL_TABLE: u32 = 16_384;
/// A trace filter that is on (and does not expire) but matches another
/// client than the benchmark's: every packet is checked against it.
fn unmatched_trace() -> TraceFilter {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[198, 18, 77, 7]);
    TraceFilter {
        enabled: 1,
        generation: 1,
        expires_ns: u64::MAX,
        src,
        family: lb_common::FAMILY_V4,
        fields: TRACE_M_SRC,
        ..TraceFilter::default()
    }
}

fn main() {
    let a = args();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "bench-dataplane loads XDP programs: run it as root"
    );

    eprintln!(
        "loading the balancer with {} flow-table entries per CPU (preallocated; this takes a moment)",
        a.flow_capacity_per_cpu
    );
    let t0 = Instant::now();
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: a.flow_capacity_per_cpu,
        // The new-flow path measured is the recorded one: the insert rate
        // limit (125,000 a second per CPU by default) would turn most of a
        // round's new flows into unrecorded ones.
        new_flow_rate: 0,
        ..Default::default()
    })
    .expect("loading the balancer");
    eprintln!("loaded in {:.1} s", t0.elapsed().as_secs_f64());
    provision(&mut dp);
    let hooks = HookPair::load();

    // A full flow table: every new flow evicts one (the LRU's shrink path),
    // which an empty 4,000,000-entry table never reaches in a run.
    let dp_full = one_dsr_vip(
        DataplaneConfig {
            flow_capacity_per_cpu: FULL_TABLE,
            new_flow_rate: 0,
            ..Default::default()
        },
        "full-table",
    );
    // Fill it: four times its capacity on every CPU, so that whichever CPU
    // runs the measured calls finds no free entry.
    let fill = 4 * FULL_TABLE as usize * possible_cpus().expect("CPUs") as usize;
    eprintln!("filling a {FULL_TABLE}-entry flow table with {fill} new flows");
    let fill_start = 1usize << 23;
    let _ = measure(
        dp_full.program_ref(),
        &mut |i| fresh("198.18.1.1", fill_start + i, TCP_ACK),
        fill,
    );
    let mut full_counter = fill_start + fill;
    let flows_after_fill = dp_full.flow_entries().expect("flow entries").len();
    eprintln!("the full table holds {flows_after_fill} flows");

    // A SYN flood: a data plane whose SYN-flood switch (`new_flow_rate`
    // SYNs a second per CPU, here 1) is on after a round's first SYN, so
    // that its SYNs are looked up in no flow table, as during a flood.
    let dp_flood = one_dsr_vip(
        DataplaneConfig {
            flow_capacity_per_cpu: 65_536,
            new_flow_rate: 1,
            ..Default::default()
        },
        "SYN-flood",
    );

    // NAT mode on a data plane of its own, so that the other paths run
    // with no NAT VIP (a NAT VIP makes every packet not for a VIP look for
    // a NAT reply).
    let mut dp_nat = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 65_536,
        nat_capacity: 65_536,
        ..Default::default()
    })
    .expect("loading the NAT balancer");
    let nat_vip = VipAddr {
        addr: "198.18.1.3".parse().expect("vip"),
        port: 80,
        proto: Proto::Tcp,
    };
    dp_nat
        .add_vip(VipSpec {
            vip: nat_vip,
            mode: Mode::Nat,
            src_hash: false,
            table_size: 65537,
            quic: false,
        })
        .expect("add NAT VIP");
    let bs: Vec<_> = (1..=10)
        .map(|i| backend(format!("198.18.4.{i}").parse().expect("backend")))
        .collect();
    dp_nat.set_backends(&nat_vip, &bs).expect("NAT backends");
    let nat_request = Pkt::new("198.18.0.1", "198.18.1.3", L4::tcp(40000, 80, TCP_ACK)).bytes();
    // The first request makes the flow's NAT entry; its output names the
    // backend, whose reply the reply path then translates.
    let mut out = vec![0u8; 2048];
    let r = dp_nat
        .program_ref()
        .test_run(TestRunOptions {
            data_in: Some(&nat_request),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value, 3, "the NAT request is forwarded (XDP_TX)");
    let chosen = std::net::Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    let mut reply = Pkt::new(
        &chosen.to_string(),
        "198.18.0.1",
        L4::tcp(80, 40000, TCP_ACK),
    );
    reply.dmac = LB_MAC;
    reply.smac = [2, 0, 0, 0, 0xb, out[33]];
    let nat_reply = reply.bytes();
    let not_vip_nat = not_vip_bytes();

    let mut base = Ebpf::load(programs::BENCH).expect("bench programs");
    for name in ["bench_pass", "bench_macswap"] {
        let p: &mut Xdp = base.program_mut(name).expect(name).try_into().expect("XDP");
        p.load().expect("verifier");
    }

    let established4 = Pkt::new("198.18.0.1", "198.18.1.1", L4::tcp(40000, 80, TCP_ACK)).bytes();
    let tunnel4 = Pkt::new("198.18.0.1", "198.18.1.2", L4::tcp(40000, 80, TCP_ACK)).bytes();
    let established6 =
        Pkt::new("2001:db8::1", "2001:db8:1::1", L4::tcp(40000, 80, TCP_ACK)).bytes();
    let not_vip = not_vip_bytes();

    type Path = (&'static str, &'static str);
    let paths: [Path; 14] = [
        ("xdp_pass", "baseline: return XDP_PASS"),
        ("macswap_tx", "MAC-swap XDP_TX program"),
        ("not_a_vip", "IPv4 TCP to a non-VIP address"),
        (
            "established_dsr",
            "established IPv4 TCP flow, dsr (flow-table hit)",
        ),
        (
            "established_tunnel",
            "established IPv4 TCP flow, tunnel encap",
        ),
        ("established_ipv6", "established IPv6 TCP flow, dsr"),
        (
            "established_dsr_trace",
            "established IPv4 TCP flow, dsr, a `hola trace` filter on that does not match it",
        ),
        (
            "new_flow",
            "new IPv4 TCP flow (flow-table miss, Maglev, insert)",
        ),
        ("tcp_syn", "TCP SYN of a new flow"),
        (
            "tcp_syn_flood",
            "TCP SYN of a new flow during a SYN flood (looked up in no flow table)",
        ),
        (
            "new_flow_full",
            "new IPv4 TCP flow into a full flow table (evicts one)",
        ),
        (
            "established_nat",
            "established IPv4 TCP flow, nat request (rewrite, checksums, NAT entry)",
        ),
        ("nat_reply", "IPv4 TCP reply of a nat flow, translated back"),
        (
            "not_a_vip_nat",
            "IPv4 TCP to a non-VIP address while a nat VIP exists",
        ),
    ];
    let mut results: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut hook_rounds: Vec<Vec<[f64; 2]>> = Vec::new();
    let mut fresh_counter = 0usize;
    for round in 0..a.rounds {
        for (name, _) in paths {
            // Only this row runs with a trace on (the others measure the
            // program as it runs with none).
            let filter = if name == "established_dsr_trace" {
                unmatched_trace()
            } else {
                TraceFilter::default()
            };
            dp.set_trace_filter(&filter).expect("TRACE_FILTER");
            let (prog, mut make): (&Xdp, Maker) = match name {
                "xdp_pass" => (
                    base.program("bench_pass")
                        .expect("p")
                        .try_into()
                        .expect("XDP"),
                    Box::new(|_| not_vip.clone()),
                ),
                "macswap_tx" => (
                    base.program("bench_macswap")
                        .expect("p")
                        .try_into()
                        .expect("XDP"),
                    Box::new(|_| not_vip.clone()),
                ),
                "new_flow_full" => {
                    let start = full_counter;
                    full_counter += a.calls;
                    (
                        dp_full.program_ref(),
                        Box::new(move |i| fresh("198.18.1.1", start + i, TCP_ACK)),
                    )
                }
                "tcp_syn_flood" => {
                    let start = fresh_counter;
                    fresh_counter += a.calls;
                    (
                        dp_flood.program_ref(),
                        Box::new(move |i| fresh("198.18.1.1", start + i, TCP_SYN)),
                    )
                }
                "established_nat" | "nat_reply" | "not_a_vip_nat" => {
                    let f: Maker = match name {
                        "established_nat" => Box::new(|_| nat_request.clone()),
                        "nat_reply" => Box::new(|_| nat_reply.clone()),
                        _ => Box::new(|_| not_vip_nat.clone()),
                    };
                    (dp_nat.program_ref(), f)
                }
                _ => {
                    let lb: &Xdp = dp.program_ref();
                    let f: Maker = match name {
                        "not_a_vip" => Box::new(|_| not_vip.clone()),
                        "established_dsr" | "established_dsr_trace" => {
                            Box::new(|_| established4.clone())
                        }
                        "established_tunnel" => Box::new(|_| tunnel4.clone()),
                        "established_ipv6" => Box::new(|_| established6.clone()),
                        "new_flow" => {
                            let start = fresh_counter;
                            fresh_counter += a.calls;
                            Box::new(move |i| fresh("198.18.1.1", start + i, TCP_ACK))
                        }
                        _ => {
                            let start = fresh_counter;
                            fresh_counter += a.calls;
                            Box::new(move |i| fresh("198.18.1.1", start + i, TCP_SYN))
                        }
                    };
                    (lb, f)
                }
            };
            // The packet buffers are built outside the timed region: the
            // kernel times only the program.
            let inputs: Vec<Vec<u8>> = (0..a.calls).map(&mut make).collect();
            let ns = measure(prog, &mut |i| inputs[i].clone(), a.calls);
            results.entry(name).or_default().push(ns);
        }
        hook_rounds.push(hooks.round(round, a.calls, &|name| match name {
            "not_a_vip" => not_vip.clone(),
            "established_dsr" => established4.clone(),
            "established_tunnel" => tunnel4.clone(),
            _ => established6.clone(),
        }));
        eprintln!("round {}/{} done", round + 1, a.rounds);
    }

    let pass = median(&mut results["xdp_pass"].clone());
    let mut table = Vec::new();
    let mut json_paths = serde_json::Map::new();
    for (name, what) in paths {
        let mut v = results[name].clone();
        let med = median(&mut v);
        let (lo, hi) = (v[0], v[v.len() - 1]);
        let net = med - pass;
        table.push(format!(
            "{name:<20} {med:>8.1} {net:>8.1} {lo:>8.1} {hi:>8.1}  {what}"
        ));
        json_paths.insert(
            name.into(),
            json!({"what": what, "median_ns": med, "net_ns": net, "min_ns": lo, "max_ns": hi, "rounds": results[name]}),
        );
    }
    println!(
        "{:<20} {:>8} {:>8} {:>8} {:>8}",
        "path", "ns", "net ns", "min", "max"
    );
    for l in &table {
        println!("{l}");
    }
    let hooks_doc = hooks_json(&hook_rounds, pass);
    println!("\ntrace hooks, no trace on, against none (net ns; difference = median of rounds)");
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>8}  verdict",
        "path", "hooks", "none", "diff", "noise"
    );
    for name in HOOK_PATHS {
        let p = &hooks_doc["paths"][name];
        let v = |k: &str| p[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{name:<20} {:>10.1} {:>10.1} {:>+10.1} {:>8.1}  {}",
            p["hooks"]["net_ns"].as_f64().unwrap_or(f64::NAN),
            p["none"]["net_ns"].as_f64().unwrap_or(f64::NAN),
            v("diff_ns"),
            v("noise_ns"),
            match p["within_noise"].as_bool() {
                Some(true) => "within noise",
                Some(false) => "outside noise",
                None => "one round: not judged",
            }
        );
    }
    let mut doc = machine();
    doc.insert("method".into(), "BPF_PROG_TEST_RUN, repeat=1 per call, kernel-measured duration averaged over calls; net = median - median(xdp_pass)".into());
    doc.insert("rounds".into(), a.rounds.into());
    doc.insert("calls_per_round".into(), a.calls.into());
    doc.insert(
        "flow_capacity_per_cpu".into(),
        a.flow_capacity_per_cpu.into(),
    );
    doc.insert("full_table_per_cpu".into(), FULL_TABLE.into());
    doc.insert("full_table_flows".into(), flows_after_fill.into());
    doc.insert("paths".into(), json_paths.into());
    doc.insert("trace_hooks".into(), hooks_doc);
    if let Some(dir) = std::path::Path::new(&a.out).parent() {
        std::fs::create_dir_all(dir).expect("create output directory");
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&doc).expect("json")).expect("write JSON");
    println!("written to {}", a.out);
}
