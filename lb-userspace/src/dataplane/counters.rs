//! The per-CPU counters, summed: reasons, and per VIP and backend.

use lb_common::{BackendStats, HandshakeStats, Reason, ReasonStats, maps as names};

use super::{Dataplane, DataplaneError, Stats, VipCounters, map_err};

impl Dataplane {
    /// Every counter, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, DataplaneError> {
        let mut out = Stats::default();
        for r in Reason::ALL {
            let per_cpu = self
                .reasons
                .get(&(r as u32), 0)
                .map_err(map_err(names::REASONS))?;
            let mut sum = ReasonStats::default();
            for v in per_cpu.iter() {
                sum.packets += v.packets;
                sum.bytes += v.bytes;
            }
            out.reasons.insert(r.name(), sum);
        }
        for v in self.tables.vips() {
            let per_cpu = self
                .vip_stats
                .get(&v.id, 0)
                .map_err(map_err(names::VIP_STATS))?;
            let mut c = VipCounters::default();
            for s in per_cpu.iter() {
                c.stats.packets += s.packets;
                c.stats.bytes += s.bytes;
                c.stats.new_flows += s.new_flows;
                c.stats.no_backend += s.no_backend;
            }
            for b in &v.backends {
                let per_cpu = self
                    .backend_stats
                    .get(&b.id, 0)
                    .map_err(map_err(names::BACKEND_STATS))?;
                let mut sum = BackendStats::default();
                for s in per_cpu.iter() {
                    sum.packets += s.packets;
                    sum.bytes += s.bytes;
                    sum.new_flows += s.new_flows;
                }
                c.backends.insert(b.spec.addr, sum);
                if v.spec.mode.is_nat() {
                    let per_cpu = self
                        .handshakes
                        .get(&b.id, 0)
                        .map_err(map_err(names::HANDSHAKES))?;
                    let mut h = HandshakeStats::default();
                    for s in per_cpu.iter() {
                        for (t, x) in h.buckets.iter_mut().zip(s.buckets) {
                            *t += x;
                        }
                        h.syn_acks += s.syn_acks;
                        h.rsts += s.rsts;
                    }
                    c.handshakes.insert(b.spec.addr, h);
                }
            }
            out.vips.insert(v.spec.vip, c);
        }
        Ok(out)
    }
}
