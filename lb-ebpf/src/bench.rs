//! Baselines for `cargo xtask bench`: the cost of an XDP program that does
//! nothing, and of one that bounces every frame back (the forwarding ceiling).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

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
