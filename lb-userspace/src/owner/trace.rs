//! `hola trace`, served by the owner: one trace at a time. Starting one
//! writes `TRACE_FILTER` (enabled, a new generation, a short lease); every
//! 20 ms the owner drains `TRACE_RING`, pairs each packet's "before" and
//! "after" records, names its VIP and backend from the tables, and sends it
//! to the API's stream. The trace ends, and the filter is switched off, at
//! its packet count, at its time, when the client goes (the stream's
//! receiver is dropped) or when the daemon stops. The lease (pushed forward
//! while the trace runs) bounds what a daemon that dies leaves behind: the
//! program stops matching by itself.

use std::{collections::HashMap, time::Duration};

use lb_common::{
    Reason,
    trace::{TRACE_AFTER, TRACE_BEFORE, TRACE_NO_SLOT, TraceFilter, TraceRecord},
};
use tokio::{sync::mpsc, time::Instant};

use super::{ErrorKind, Owner, OwnerError};
use crate::{
    dataplane::monotonic_ns,
    trace::{MAX_SECONDS, TraceEnd, TraceLine, TracePacket, TraceSpec, hex},
};

/// How long the filter holds without the owner pushing it forward.
pub const LEASE: Duration = Duration::from_secs(3);
/// "Before" records waiting for their "after" at most (older ones are
/// dropped, counted as lost: their "after" was lost).
const WAITING: usize = 4096;
/// Records read from the ring per drain.
const DRAIN_MAX: usize = 8192;

/// A trace in progress.
pub(super) struct Tracing {
    out: mpsc::Sender<TraceLine>,
    filter: TraceFilter,
    until: Instant,
    count: Option<u64>,
    packets: u64,
    /// Records the program lost before this trace started, and packets
    /// this trace saw only half of.
    lost_before: u64,
    halves: u64,
    waiting: HashMap<(u32, u32), TraceRecord>,
    /// Wall clock minus the monotonic clock (ns), to date the records.
    wall_offset: i128,
}

impl Owner {
    /// Starts a trace whose packets go to `out`.
    pub(super) fn trace_start(
        &mut self,
        spec: TraceSpec,
        out: mpsc::Sender<TraceLine>,
    ) -> Result<(), OwnerError> {
        if self.tracing.is_some() {
            return Err(OwnerError::new(
                ErrorKind::Conflict,
                "a trace is running already (one at a time): wait for it to end, or stop its \
                 `hola trace` (Ctrl-C)",
            ));
        }
        let mut filter = spec
            .filter()
            .map_err(|e| OwnerError::new(ErrorKind::Invalid, e))?;
        if spec.vip {
            let d = spec.dst.ok_or_else(|| {
                OwnerError::new(ErrorKind::Invalid, "--vip needs the VIP's address")
            })?;
            let found = self.config.vips.iter().any(|v| {
                v.address == d.address && d.port.is_none_or(|p| p == v.port || v.port == 0)
            });
            if !found {
                return Err(OwnerError::new(
                    ErrorKind::NotFound,
                    format!("no VIP at {d}; `hola vip list` shows the VIPs"),
                ));
            }
        }
        // Records a trace that ended abruptly left in the ring.
        while !self.dp.next_trace_records(DRAIN_MAX).is_empty() {}
        self.trace_generation = self.trace_generation.wrapping_add(1);
        filter.enabled = 1;
        filter.generation = self.trace_generation;
        let seconds = spec.seconds.unwrap_or(MAX_SECONDS);
        let until = Instant::now() + Duration::from_secs(seconds);
        filter.expires_ns = lease_end(until);
        let lost_before = self.dp.trace_lost().map_err(failed)?;
        self.dp.set_trace_filter(&filter).map_err(failed)?;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        tracing::info!(?spec, "trace started");
        self.tracing = Some(Tracing {
            out,
            filter,
            until,
            count: spec.count,
            packets: 0,
            lost_before,
            halves: 0,
            waiting: HashMap::new(),
            wall_offset: wall - i128::from(monotonic_ns()),
        });
        Ok(())
    }

    /// Every 20 ms while a trace runs: its packets sent, its end checked,
    /// its lease pushed forward.
    pub(super) fn trace_drain(&mut self) {
        let Some(mut t) = self.tracing.take() else {
            return;
        };
        let records = self.dp.next_trace_records(DRAIN_MAX);
        let mut why = None;
        for r in records {
            if r.kind == TRACE_BEFORE {
                if t.waiting.len() >= WAITING {
                    t.halves += t.waiting.len() as u64;
                    t.waiting.clear();
                }
                t.waiting.insert((r.cpu, r.seq), r);
                continue;
            }
            if r.kind != TRACE_AFTER {
                continue;
            }
            let Some(before) = t.waiting.remove(&(r.cpu, r.seq)) else {
                t.halves += 1;
                continue;
            };
            let p = self.trace_packet(&t, &before, &r);
            match t.out.try_send(TraceLine::Packet(p)) {
                Ok(()) => t.packets += 1,
                // The client reads too slowly: counted as lost.
                Err(mpsc::error::TrySendError::Full(_)) => t.halves += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => why = Some("closed"),
            }
            if t.count.is_some_and(|c| t.packets >= c) {
                why = Some("count");
                break;
            }
        }
        if why.is_none() && t.out.is_closed() {
            why = Some("closed");
        }
        if why.is_none() && Instant::now() >= t.until {
            why = Some("seconds");
        }
        match why {
            Some(why) => self.trace_end(t, why),
            None => {
                let expires = lease_end(t.until);
                // Pushed forward about once a second, not every drain.
                if expires.saturating_sub(t.filter.expires_ns) >= 1_000_000_000 {
                    t.filter.expires_ns = expires;
                    if let Err(e) = self.dp.set_trace_filter(&t.filter) {
                        tracing::warn!(error = %e, "pushing the trace filter's lease forward");
                    }
                }
                self.tracing = Some(t);
            }
        }
    }

    /// Ends the trace in progress, if any (the daemon is stopping).
    pub(super) fn trace_stop(&mut self) {
        if let Some(t) = self.tracing.take() {
            self.trace_end(t, "stopped");
        }
    }

    /// Switches the filter off and tells the client why the trace ended.
    fn trace_end(&mut self, t: Tracing, why: &str) {
        let off = TraceFilter {
            generation: t.filter.generation,
            ..TraceFilter::default()
        };
        if let Err(e) = self.dp.set_trace_filter(&off) {
            // Left on, it goes quiet when its lease runs out.
            tracing::warn!(error = %e, "switching the trace filter off; it expires within {LEASE:?}");
        }
        let lost_now = self.dp.trace_lost().unwrap_or(t.lost_before);
        let lost = lost_now.saturating_sub(t.lost_before) + t.halves + t.waiting.len() as u64;
        tracing::info!(why, packets = t.packets, lost, "trace ended");
        let _ = t.out.try_send(TraceLine::End(TraceEnd {
            why: why.into(),
            packets: t.packets,
            lost,
        }));
    }

    /// A packet's two records, with its VIP and backend named.
    fn trace_packet(&self, t: &Tracing, before: &TraceRecord, after: &TraceRecord) -> TracePacket {
        let tables = self.dp.tables();
        let backend = tables.backend_by_id(after.backend_id);
        let vip = tables
            .vips()
            .find(|v| v.id == after.vip_id && after.vip_id != 0)
            .map(|v| v.spec.vip.to_string())
            .or_else(|| backend.map(|(v, _)| v.to_string()));
        let reason = Reason::ALL
            .get(after.reason as usize)
            .map_or_else(|| format!("reason_{}", after.reason), |r| r.name().into());
        // A flow-table hit has no slot: the table did not place it.
        let placed = matches!(reason.as_str(), "fwd_new_flow" | "fwd_syn" | "fwd_flood");
        let time = i128::from(before.time_ns) + t.wall_offset;
        TracePacket {
            time_ns: u64::try_from(time).unwrap_or(0),
            cpu: before.cpu,
            reason,
            action: action_name(after.action).into(),
            vip,
            backend: backend.map(|(_, b)| b),
            slot: (placed && after.slot != TRACE_NO_SLOT).then_some(after.slot),
            before_len: before.len,
            before: hex(captured(before)),
            after_len: after.len,
            after: hex(captured(after)),
        }
    }
}

/// The captured bytes of a record.
fn captured(r: &TraceRecord) -> &[u8] {
    &r.data[..(r.caplen as usize).min(r.data.len())]
}

/// The XDP action's name.
fn action_name(a: u32) -> &'static str {
    match a {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

/// The filter's expiry (`bpf_ktime_get_ns`) for a trace that runs until
/// `until`: a lease from now, never past the trace's end.
fn lease_end(until: Instant) -> u64 {
    let left = until.saturating_duration_since(Instant::now()).min(LEASE);
    monotonic_ns() + left.as_nanos() as u64
}

fn failed(e: crate::dataplane::DataplaneError) -> OwnerError {
    OwnerError::new(ErrorKind::Failed, format!("the trace maps: {e}"))
}
