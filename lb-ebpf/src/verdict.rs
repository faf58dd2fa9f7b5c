//! Verdicts: what the program returns, and the one counter each increments.

use aya_ebpf::bindings::xdp_action;
use lb_common::Reason;

use crate::maps::{BACKEND_STATS, REASONS, VIP_STATS};

/// The XDP action together with the reason it was chosen.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub reason: Reason,
    pub action: u32,
}

impl From<Reason> for Verdict {
    /// A reason that ends the packet's journey early decides its own action:
    /// unknown traffic passes, malformed or unservable traffic drops, an
    /// internal failure aborts.
    #[inline(always)]
    fn from(reason: Reason) -> Self {
        let action = match reason {
            Reason::PassNotIp
            | Reason::PassVlanStack
            | Reason::PassNotVip
            | Reason::PassIpv6ExtHdr => xdp_action::XDP_PASS,
            Reason::DropMalformed
            | Reason::DropFragment
            | Reason::DropNoBackend
            | Reason::DropNoNexthop
            | Reason::DropNatExpired
            | Reason::DropNatNoPort
            | Reason::DropTooBig => xdp_action::XDP_DROP,
            // Forwarding reasons carry their own action (TX or REDIRECT) and
            // never arrive here; if one did, aborting makes it visible.
            Reason::FwdEstablished
            | Reason::FwdNewFlow
            | Reason::FwdPeerFlow
            | Reason::FwdSyn
            | Reason::FwdFlood
            | Reason::FwdQuicServerId
            | Reason::FwdQuicUnknownId
            | Reason::FwdQuicIdDown
            | Reason::FwdQuicBadId
            | Reason::FwdFragment
            | Reason::FwdFragmentEarly
            | Reason::FwdNatReply
            | Reason::FwdNatIcmp
            | Reason::FwdIcmpFlow
            | Reason::FwdIcmpMaglev
            | Reason::TxTooBig
            | Reason::Aborted => xdp_action::XDP_ABORTED,
        };
        Verdict { reason, action }
    }
}

/// Counts one packet of `bytes` under `reason`, in the programs that
/// forward to backends (`hola_lb`, `hola_nat_request`, `hola_frag`): an
/// established forward is not counted here, its backend's counters hold
/// it (`credit_forward`), and userspace derives the `FwdEstablished` total
/// from them (one counter write per established packet; see
/// `BackendStats`).
#[inline(always)]
pub fn count_forward(reason: Reason, bytes: u64) {
    if reason as u32 != Reason::FwdEstablished as u32 {
        count(reason, bytes);
    }
}

/// Counts one packet of `bytes` under `reason` (the other programs, which
/// never return `FwdEstablished`).
#[inline(always)]
pub fn count(reason: Reason, bytes: u64) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU array element; only this CPU writes it while the
        // program runs, and XDP programs are not preempted mid-run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Counts a packet of `bytes` for VIP `vip_id` that reaches no backend
/// (dropped, aborted, answered "too big"): a forwarded packet is counted
/// by its backend alone, and userspace adds the backends' counters to the
/// VIP's (see `BackendStats`).
#[inline(always)]
pub fn count_vip(vip_id: u32, bytes: u64) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU element, written only by this CPU.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
        }
    }
}

/// Credits a packet of `bytes` forwarded to `backend_id` of VIP `vip_id`:
/// the backend's packets and bytes and, for the first packet of a flow the
/// Maglev table placed (`new_flow`), the VIP's and the backend's new flows.
/// A packet forwarded under another reason than `FwdEstablished`
/// (`counted`: `REASONS` counts it too) is also added to the backend's
/// `counted_*`, so that userspace can tell the established ones. Called
/// only once the packet is on its way (its action chosen), so that a
/// packet dropped later (a NAT program's drop, a failed encapsulation or
/// redirect) is counted under its reason and its VIP instead.
#[inline(always)]
pub fn credit_forward(vip_id: u32, backend_id: u32, bytes: u64, new_flow: bool, counted: bool) {
    if new_flow && let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU element, written only by this CPU.
        unsafe { (*s).new_flows += 1 };
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU element, written only by this CPU.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            if new_flow {
                (*s).new_flows += 1;
            }
            if counted {
                (*s).counted_packets += 1;
                (*s).counted_bytes += bytes;
            }
        }
    }
}
