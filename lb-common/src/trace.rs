//! `hola trace`: the filter the program checks at entry while a trace is
//! on (`TRACE_FILTER`), the per-CPU state that carries a traced packet's
//! decision to its verdict (`TRACE_STATE`), and the records written to the
//! `TRACE_RING` ring buffer: the packet as it arrived and as it leaves.

/// Bytes of a packet a record holds at most (its head: every header hola
/// reads or writes, and the start of the payload).
pub const TRACE_SNAP: usize = 256;
// The program bounds a copy's length with a mask of TRACE_SNAP - 1.
const _: () = assert!(TRACE_SNAP.is_power_of_two());

/// Size of the `TRACE_RING` ring buffer (a power-of-two multiple of the page
/// size): about 1,680 records of [`TraceRecord`]'s size (plus the ring's
/// 8-byte header each), drained every 20 ms while a trace runs.
pub const TRACE_RING_BYTES: u32 = 1 << 19;

/// [`TraceFilter::fields`]: match the source address.
pub const TRACE_M_SRC: u8 = 1;
/// Match the destination address.
pub const TRACE_M_DST: u8 = 2;
/// Match the source port.
pub const TRACE_M_SPORT: u8 = 4;
/// Match the destination port.
pub const TRACE_M_DPORT: u8 = 8;
/// Match the IP protocol.
pub const TRACE_M_PROTO: u8 = 16;

/// The one element of `TRACE_FILTER`. While `enabled` is 0 (no trace), the
/// program reads nothing else of it. Written by userspace (the daemon,
/// while it serves a trace), read by the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// Non-zero while a trace runs.
    pub enabled: u32,
    /// Which trace this is (a new value per trace): a packet marked under an
    /// earlier trace is not reported under this one.
    pub generation: u32,
    /// Until when (`bpf_ktime_get_ns`) the filter holds: the daemon pushes
    /// it forward while the trace's client is connected, so a filter left
    /// behind by a daemon that died goes quiet by itself.
    pub expires_ns: u64,
    /// Addresses as in [`crate::FlowKey`] (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports, network order.
    pub sport: u16,
    pub dport: u16,
    /// `FAMILY_V4` or `FAMILY_V6` when an address is matched (0: any).
    pub family: u8,
    pub proto: u8,
    /// `TRACE_M_*`: the fields above that are matched.
    pub fields: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<TraceFilter>() == 56);

/// The one per-CPU element of `TRACE_STATE`: whether the packet this CPU
/// is processing is being traced, and what the program decided for it so
/// far. A tail-called program runs on the same CPU right after, so it sees
/// the same element. Written and read by the program; userspace reads
/// `lost`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceState {
    /// 1 from a matching packet's entry to its verdict.
    pub active: u32,
    /// The filter's generation when `active` was set.
    pub generation: u32,
    /// Numbers this CPU's traced packets (pairs a "before" with its "after").
    pub seq: u32,
    /// What the balancing decision noted (0: none).
    pub vip_id: u32,
    pub backend_id: u32,
    /// The Maglev slot of the flow's hash in its VIP's table
    /// ([`TRACE_NO_SLOT`] when none was computed).
    pub slot: u32,
    /// Records this CPU could not write because `TRACE_RING` was full.
    pub lost: u64,
}
const _: () = assert!(core::mem::size_of::<TraceState>() == 32);

/// [`TraceState::slot`] and [`TraceRecord::slot`]: no slot.
pub const TRACE_NO_SLOT: u32 = u32::MAX;

/// [`TraceRecord::kind`]: the packet as it arrived at the XDP hook.
pub const TRACE_BEFORE: u8 = 0;
/// The packet as the verdict leaves it, with the decision.
pub const TRACE_AFTER: u8 = 1;

/// One record of `TRACE_RING`. Written by the program, read by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TraceRecord {
    /// `bpf_ktime_get_ns` when written.
    pub time_ns: u64,
    pub cpu: u32,
    /// [`TraceState::seq`]: the same in a packet's two records.
    pub seq: u32,
    /// [`TRACE_BEFORE`] or [`TRACE_AFTER`].
    pub kind: u8,
    pub _pad: [u8; 3],
    /// After: the [`crate::Reason`] and the XDP action.
    pub reason: u32,
    pub action: u32,
    /// After: [`TraceState::vip_id`], `backend_id`, `slot`.
    pub vip_id: u32,
    pub backend_id: u32,
    pub slot: u32,
    /// The packet's length, and how many of its first bytes `data` holds.
    pub len: u32,
    pub caplen: u32,
    pub data: [u8; TRACE_SNAP],
}
const _: () = assert!(core::mem::size_of::<TraceRecord>() == 48 + TRACE_SNAP);

crate::pod!(TraceFilter, TraceState);
