//! `hola-decap`: the backend side of `tunnel` mode. Kernels without the ipip
//! module (this one included) cannot terminate IP-in-IP, so a backend attaches
//! this program to its NIC: it strips the outer IPv4 (protocol 4) or IPv6
//! (next header 41) header and passes the inner packet to the stack, byte for
//! byte as the balancer received it but for the MACs.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::ReasonStats;

/// Index 0: packets decapsulated; 1: passed untouched. Written by the
/// program, read by tests and operators.
#[map]
pub static DECAP_STATS: PerCpuArray<ReasonStats> = PerCpuArray::with_max_entries(2, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

#[xdp]
pub fn hola_decap(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let idx = match try_decap(&ctx) {
        Ok(()) => 0,
        Err(()) => 1,
    };
    if let Some(c) = DECAP_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU element, written only by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, ()> {
    if ctx.data() + off + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    Ok((ctx.data() + off) as *mut T)
}

fn try_decap(ctx: &XdpContext) -> Result<(), ()> {
    let eth: *const [u8; ETH_HLEN] = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { eth.read_unaligned() };
    let mut proto = u16::from_be_bytes([eth[12], eth[13]]);
    let mut tag = None;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let t: *const [u8; 4] = ptr_at(ctx, ETH_HLEN)?;
        // SAFETY: bounds checked by ptr_at.
        let t = unsafe { t.read_unaligned() };
        proto = u16::from_be_bytes([t[2], t[3]]);
        tag = Some([eth[12], eth[13], t[0], t[1]]);
    }
    let l3 = if tag.is_some() {
        ETH_HLEN + 4
    } else {
        ETH_HLEN
    };
    let (outer_len, inner_proto) = if proto == ETH_P_IP {
        let h: *const [u8; 20] = ptr_at(ctx, l3)?;
        // SAFETY: bounds checked by ptr_at.
        let h = unsafe { h.read_unaligned() };
        // Only option-less outer headers: that is what the balancer writes.
        if h[0] != 0x45 || h[9] != 4 {
            return Err(());
        }
        ptr_at::<[u8; 20]>(ctx, l3 + 20)?;
        (20usize, ETH_P_IP)
    } else if proto == ETH_P_IPV6 {
        let h: *const [u8; 40] = ptr_at(ctx, l3)?;
        // SAFETY: bounds checked by ptr_at.
        let h = unsafe { h.read_unaligned() };
        if h[0] >> 4 != 6 || h[6] != 41 {
            return Err(());
        }
        ptr_at::<[u8; 40]>(ctx, l3 + 40)?;
        (40usize, ETH_P_IPV6)
    } else {
        return Err(());
    };
    // Move the L2 header forward over the outer IP header, then drop the
    // bytes in front of it. Old [0, l3) and new [outer_len, outer_len + l3)
    // never overlap because outer_len >= 20 > 18 >= l3.
    let p = inner_proto.to_be_bytes();
    match tag {
        Some(t) => {
            let d: *mut [u8; 18] = ptr_at(ctx, outer_len)?;
            let mut e = [0u8; 18];
            e[..12].copy_from_slice(&eth[..12]);
            e[12..16].copy_from_slice(&t);
            e[16..].copy_from_slice(&p);
            // SAFETY: bounds checked by ptr_at.
            unsafe { d.write_unaligned(e) };
        }
        None => {
            let d: *mut [u8; 14] = ptr_at(ctx, outer_len)?;
            let mut e = [0u8; 14];
            e[..12].copy_from_slice(&eth[..12]);
            e[12..].copy_from_slice(&p);
            // SAFETY: bounds checked by ptr_at.
            unsafe { d.write_unaligned(e) };
        }
    }
    // SAFETY: shrinking the head by the outer header, which is in the packet.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(());
    }
    Ok(())
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
