//! Baselines for `cargo xtask bench`: the cost of an XDP program that does
//! nothing, and of one that bounces every frame back (the forwarding ceiling).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// `bench_gen`'s setting, element 0: how many distinct flows to cycle
/// through (written by the benchmark before it runs the generator).
#[map]
static GEN_FLOWS: Array<u32> = Array::with_max_entries(1, 0);

/// `bench_gen`'s frame template: the first 54 bytes (Ethernet, IPv4, TCP
/// or UDP and the start of its payload) of every frame, written by the
/// benchmark. Live-frames mode recycles a
/// frame's memory after the device on the other side rewrote it (hola's
/// encapsulation, NAT), so every header byte is written again each time.
#[map]
static GEN_TEMPLATE: Array<[u8; 54]> = Array::with_max_entries(1, 0);

/// `bench_gen`'s per-CPU frame counter.
#[map]
static GEN_COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `bench_sink`'s per-CPU count of frames received.
#[map]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The forwarding benchmark's generator, run by BPF_PROG_TEST_RUN in
/// live-frames mode on an IPv4 TCP or UDP frame of at least 54 bytes:
/// frame `n` gets flow `n % GEN_FLOWS` (its source port, and the source
/// address's last two bytes beyond 60,000 flows; the IPv4 checksum
/// recomputed, the TCP one left: nothing on the path checks it) and is
/// transmitted (XDP_TX) on the interface the run names.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    // Ethernet (14) + IPv4 (20) + the ports (4).
    if start + 38 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let flows = match GEN_FLOWS.get(0) {
        Some(f) if *f > 0 => *f,
        _ => 1,
    };
    let n = match GEN_COUNTER.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU.
        Some(c) => unsafe {
            let n = *c;
            *c = n.wrapping_add(1);
            n
        },
        None => 0,
    };
    let template = match GEN_TEMPLATE.get(0) {
        Some(t) => *t,
        None => return xdp_action::XDP_ABORTED,
    };
    if start + 54 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let flow = n % flows;
    let port = 1024 + (flow % 60_000) as u16;
    let hi = (flow / 60_000) as u16;
    let head = start as *mut [u8; 14];
    let ip = (start + 14) as *mut [u8; 20];
    let l4 = (start + 34) as *mut [u8; 20];
    // SAFETY: the 54 bytes are in the packet (checked above).
    unsafe {
        let mut e = [0u8; 14];
        e.copy_from_slice(&template[..14]);
        head.write_unaligned(e);
        let mut u = [0u8; 20];
        u.copy_from_slice(&template[34..54]);
        u[..2].copy_from_slice(&port.to_be_bytes());
        if template[23] == 6 {
            // TCP: its checksum covers the port and (pseudo-header) the
            // source address; update it for both changes (RFC 1624).
            let word = |b: &[u8]| u32::from(u16::from_be_bytes([b[0], b[1]]));
            let mut sum = u32::from(!u16::from_be_bytes([u[16], u[17]]));
            sum += (0xffff ^ word(&template[34..36])) + u32::from(port);
            sum += (0xffff ^ word(&template[28..30])) + u32::from(hi);
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            u[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
        l4.write_unaligned(u);
        let mut h = [0u8; 20];
        h.copy_from_slice(&template[14..34]);
        h[14..16].copy_from_slice(&hi.to_be_bytes());
        h[10] = 0;
        h[11] = 0;
        let mut sum = 0u32;
        let mut i = 0;
        while i < 20 {
            sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
            i += 2;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        ip.write_unaligned(h);
    }
    xdp_action::XDP_TX
}

/// The forwarding benchmark's sink: counts every frame and drops it.
#[xdp]
pub fn bench_sink(_ctx: XdpContext) -> u32 {
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Swaps source and destination MAC and transmits on the same interface.
#[xdp]
pub fn bench_macswap(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    let p = start as *mut [u8; 12];
    // SAFETY: the 12 MAC bytes are in the packet (checked above).
    unsafe {
        let m = p.read_unaligned();
        let mut s = [0u8; 12];
        s[..6].copy_from_slice(&m[6..]);
        s[6..].copy_from_slice(&m[..6]);
        p.write_unaligned(s);
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
