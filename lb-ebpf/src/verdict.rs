//! Verdicts: what the program returns, and the one counter each increments.

use aya_ebpf::bindings::xdp_action;
use lb_common::Reason;

use crate::maps::REASONS;

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
            | Reason::DropNatNoPort => xdp_action::XDP_DROP,
            // Forwarding reasons carry their own action (TX or REDIRECT) and
            // never arrive here; if one did, aborting makes it visible.
            Reason::FwdEstablished
            | Reason::FwdNewFlow
            | Reason::FwdPeerFlow
            | Reason::FwdNatReply
            | Reason::FwdNatIcmp
            | Reason::Aborted => xdp_action::XDP_ABORTED,
        };
        Verdict { reason, action }
    }
}

/// Counts one packet of `bytes` under `reason`.
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
