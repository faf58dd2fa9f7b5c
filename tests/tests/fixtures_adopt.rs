//! Adopting a previous daemon's pinned maps: every VIP's Maglev table is
//! read back from `RINGS` in batches (`BPF_MAP_LOOKUP_BATCH`), and the
//! copy the new daemon plans from must be exactly the table the old one
//! wrote, slot for slot, for VIPs whose regions start at 0, in the middle
//! of the array, and across a batch boundary (65,536 slots), and exactly
//! what the kernel holds (read back one slot at a time).

use std::{net::IpAddr, time::Instant};

use hola_tests::fixture::{PinDir, pin_to_cpu0, require_root};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec,
};

fn backend(last: u8) -> BackendSpec {
    BackendSpec {
        addr: IpAddr::from([198, 18, 210, last]),
        weight: u32::from(last % 3) + 1,
        up: true,
        port: 0,
        nexthop: Some(Nexthop {
            dmac: [0x02, 0, 0, 0, 0x0f, last],
            smac: [0x02, 0, 0, 0, 0x0f, 0],
            ifindex: 0,
        }),
        server_id: 0,
    }
}

#[test]
fn an_adopted_maglev_table_is_the_one_written_slot_for_slot() {
    require_root();
    pin_to_cpu0();
    let dir = PinDir::new("hola-test-adopt");
    let cfg = DataplaneConfig {
        flow_capacity_per_cpu: 1024,
        ..Default::default()
    };
    // Sizes: a small one first (its region starts at slot 0), then two of
    // 65,537 (the second's region crosses slot 65,536 and ends past
    // 131,072), then a small one after them.
    let vips: Vec<(VipAddr, u32, Vec<BackendSpec>)> = [
        (1u8, 251u32, 3u8),
        (2, 65_537, 7),
        (3, 65_537, 5),
        (4, 1021, 2),
    ]
    .into_iter()
    .map(|(n, size, backends)| {
        let v = VipAddr {
            addr: IpAddr::from([198, 18, 1, n]),
            port: 80,
            proto: Proto::Tcp,
        };
        let bs = (0..backends).map(|i| backend(n * 10 + i)).collect();
        (v, size, bs)
    })
    .collect();
    let written: Vec<(u32, Vec<u32>, Vec<Option<IpAddr>>)> = {
        let mut dp = Dataplane::load_pinned(cfg.clone(), &dir.0).expect("loading pinned");
        for (v, size, bs) in &vips {
            dp.add_vip(VipSpec {
                vip: *v,
                mode: Mode::Dsr,
                src_hash: false,
                table_size: *size,
                quic: false,
            })
            .expect("add VIP");
            dp.set_backends(v, bs).expect("set backends");
        }
        vips.iter()
            .map(|(v, _, _)| {
                let s = dp.tables().vip(v).expect("the VIP");
                let by_addr = s.ring.iter().map(|id| s.backend_addr(*id)).collect();
                (s.ring_base, s.ring.clone(), by_addr)
            })
            .collect()
    };
    assert!(
        written.iter().any(|(base, ring, _)| {
            (*base as usize) < 65_536 && *base as usize + ring.len() > 65_536
        }),
        "a region must cross slot 65,536 for this test to mean anything: {:?}",
        written
            .iter()
            .map(|(b, r, _)| (*b, r.len()))
            .collect::<Vec<_>>()
    );
    let t = Instant::now();
    let dp = Dataplane::load_pinned(cfg, &dir.0).expect("loading the pinned maps again");
    println!("adopted {} VIPs in {:?}", vips.len(), t.elapsed());
    for ((v, _, _), (base, ring, by_addr)) in vips.iter().zip(&written) {
        let s = dp.tables().vip(v).expect("the adopted VIP");
        assert_eq!(s.ring_base, *base, "{v:?}: region");
        assert!(
            s.ring == *ring,
            "{v:?}: the adopted table differs from the one written"
        );
        let kernel = dp.kernel_table(v).expect("reading RINGS slot by slot");
        assert!(
            kernel == *by_addr,
            "{v:?}: RINGS differs from the table written"
        );
    }
}
