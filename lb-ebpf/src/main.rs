//! The hola balancer: one XDP entry point, thin, that hands the packet to
//! `lookup::try_lb` and turns what it returns into a verdict and one counter.
#![no_std]
#![no_main]

/// Reads one field of `SETTINGS`. Volatile so that the compiler does not
/// fold the placeholder values in (userspace rewrites them at load time);
/// field by field so that the whole struct is never copied to the stack.
macro_rules! setting {
    ($field:ident) => {
        // SAFETY: a read of a field of our own static.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::forward::SETTINGS.$field)) }
    };
}

mod cluster;
mod csum;
mod flows;
mod forward;
mod frag;
mod icmp;
mod icmp_flow;
mod lookup;
mod maps;
mod nat;
mod nat_rewrite;
mod nat_syn;
mod parse;
mod probe;
mod quic;
mod too_big;
mod trace;
mod verdict;
mod vip_direct;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn hola_lb(ctx: XdpContext) -> u32 {
    let traced = trace::entry(&ctx);
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = lookup::try_lb::<false>(&ctx, bytes, traced.is_some())
        .unwrap_or_else(verdict::Verdict::from);
    verdict::count_forward(verdict.reason, bytes);
    trace::after_with(&ctx, traced, &verdict);
    verdict.action
}

/// Tail-called by `hola_lb` for a packet of a nat or fullnat VIP, its
/// backend chosen (`NAT_SCRATCH`).
#[xdp]
pub fn hola_nat_request(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = nat::request_entry(&ctx).unwrap_or_else(verdict::Verdict::from);
    verdict::count_forward(verdict.reason, bytes);
    trace::after(&ctx, &verdict);
    verdict.action
}

/// Tail-called by `hola_lb` for a TCP or UDP packet not addressed to a VIP
/// while a NAT VIP exists: a backend's reply, or not ours.
#[xdp]
pub fn hola_nat_reply(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = nat::reply_entry(&ctx).unwrap_or_else(verdict::Verdict::from);
    verdict::count(verdict.reason, bytes);
    trace::after(&ctx, &verdict);
    verdict.action
}

/// Tail-called by `hola_lb` for an ICMP error addressed to a client (not a
/// VIP) while a NAT VIP exists.
#[xdp]
pub fn hola_icmp_to_client(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = icmp::entry(&ctx, false).unwrap_or_else(verdict::Verdict::from);
    verdict::count(verdict.reason, bytes);
    trace::after(&ctx, &verdict);
    verdict.action
}

/// Tail-called by `hola_lb` for an ICMP error addressed to a VIP address.
#[xdp]
pub fn hola_icmp_to_backend(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = icmp::entry(&ctx, true).unwrap_or_else(verdict::Verdict::from);
    verdict::count(verdict.reason, bytes);
    trace::after(&ctx, &verdict);
    verdict.action
}

/// Tail-called by `hola_lb` for a `tunnel` VIP's packet that would not fit
/// its egress interface's MTU once encapsulated: answers "too big".
#[xdp]
pub fn hola_too_big(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = too_big::entry(&ctx).unwrap_or_else(verdict::Verdict::from);
    verdict::count(verdict.reason, bytes);
    trace::after(&ctx, &verdict);
    verdict.action
}

/// Tail-called by `hola_lb` for a fragment to a VIP address, or from a NAT
/// VIP's backend: the first is balanced, the later ones follow it.
#[xdp]
pub fn hola_frag(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = frag::entry(&ctx, bytes).unwrap_or_else(verdict::Verdict::from);
    verdict::count_forward(verdict.reason, bytes);
    trace::after(&ctx, &verdict);
    verdict.action
}

/// tc egress on `lo`: carries the daemon's health probes through the VIP
/// (packets with a probe mark) to their backend; passes everything else.
#[classifier]
pub fn hola_probe(ctx: TcContext) -> i32 {
    probe::run(&ctx)
}

/// Tail-called by `hola_frag` for a first fragment from a NAT VIP's
/// backend not addressed to a VIP: a fragmented reply is translated back.
#[xdp]
pub fn hola_frag_reply(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = frag::reply_entry(&ctx).unwrap_or_else(verdict::Verdict::from);
    verdict::count(verdict.reason, bytes);
    trace::after(&ctx, &verdict);
    verdict.action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so
    // this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
