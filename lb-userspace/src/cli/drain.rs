//! `hola backend drain --wait`: deciding when a drained backend is empty.
//! [`Watch`] is a pure function of samples of the backend's counters over
//! time; the loop that reads them is in `dispatch`, the text in `print`.

use std::time::Duration;

/// `--quiet-for`: how long no packet may reach the backend before it
/// counts as drained.
pub const QUIET_FOR: &str = "10s";
/// `--timeout`: how long `--wait` waits at most.
pub const TIMEOUT: &str = "300s";
/// How often the counters are read (one `/v1/stats` request each).
pub const POLL: Duration = Duration::from_secs(1);
/// How often a line says what the backend still sees while waiting.
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// One reading of a backend's counters; `at` is when it was asked for,
/// since the wait began (a packet it counts arrived at or before `at`, to
/// the few milliseconds a reading takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at: Duration,
    pub packets: u64,
    pub new_flows: u64,
}

/// Packets and new flows that reached the backend over a stretch of the
/// wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub packets: u64,
    pub new_flows: u64,
}

impl Seen {
    fn add(&mut self, o: Seen) {
        self.packets += o.packets;
        self.new_flows += o.new_flows;
    }
}

/// What a sample says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Packets reached the backend since the previous sample.
    Busy,
    /// No packet seen since this time (since the wait began), not yet for
    /// the quiet period.
    QuietSince(Duration),
    /// No packet for the whole quiet period: the backend is drained.
    Done,
}

/// The backend's counters followed over a wait.
#[derive(Clone, Debug)]
pub struct Watch {
    quiet_for: Duration,
    prev: Option<Sample>,
    /// When the last packet reached the backend, at the latest: the sample
    /// that first counted it. Before any packet, the first sample: what
    /// came before the wait is not known, so quiet is counted from there.
    last_packet: Duration,
    total: Seen,
    since_line: Seen,
}

impl Watch {
    pub fn new(quiet_for: Duration) -> Self {
        Watch {
            quiet_for,
            prev: None,
            last_packet: Duration::ZERO,
            total: Seen::default(),
            since_line: Seen::default(),
        }
    }

    /// Takes the next sample (samples come in time order).
    pub fn observe(&mut self, s: Sample) -> Status {
        let busy = match self.prev {
            None => {
                self.last_packet = s.at;
                false
            }
            Some(p) => {
                let d = Seen {
                    packets: delta(p.packets, s.packets),
                    new_flows: delta(p.new_flows, s.new_flows),
                };
                self.total.add(d);
                self.since_line.add(d);
                // A counter that went down was reset (the backend removed
                // and added again): its packets are not known, so busy.
                let busy = d.packets > 0 || s.packets < p.packets;
                if busy {
                    self.last_packet = s.at;
                }
                busy
            }
        };
        self.prev = Some(s);
        if self.quiet() >= self.quiet_for {
            Status::Done
        } else if busy {
            Status::Busy
        } else {
            Status::QuietSince(self.last_packet)
        }
    }

    /// How long no packet has been seen, as of the last sample.
    pub fn quiet(&self) -> Duration {
        self.prev
            .map_or(Duration::ZERO, |p| p.at.saturating_sub(self.last_packet))
    }

    /// Everything seen since the wait began.
    pub fn total(&self) -> Seen {
        self.total
    }

    /// What was seen since the previous call (the previous progress line).
    pub fn take_since_line(&mut self) -> Seen {
        std::mem::take(&mut self.since_line)
    }
}

/// How much a counter grew; after a reset (it went down), all it holds.
fn delta(old: u64, new: u64) -> u64 {
    if new >= old { new - old } else { new }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u64, packets: u64, new_flows: u64) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            packets,
            new_flows,
        }
    }

    fn run(quiet_for_ms: u64, samples: &[Sample]) -> (Vec<Status>, Watch) {
        let mut w = Watch::new(Duration::from_millis(quiet_for_ms));
        let statuses = samples.iter().map(|x| w.observe(*x)).collect();
        (statuses, w)
    }

    fn since(ms: u64) -> Status {
        Status::QuietSince(Duration::from_millis(ms))
    }

    #[test]
    fn an_idle_backend_is_done_after_the_quiet_period_from_the_first_sample() {
        // Counters that do not move: quiet counts from the first sample,
        // since what came before the wait is not known.
        let (st, w) = run(
            2000,
            &[
                s(0, 500, 7),
                s(1000, 500, 7),
                s(2000, 500, 7),
                s(3000, 500, 7),
            ],
        );
        assert_eq!(st, [since(0), since(0), Status::Done, Status::Done]);
        assert_eq!(w.total(), Seen::default());
        assert_eq!(w.quiet(), Duration::from_millis(3000));
    }

    #[test]
    fn packets_restart_the_quiet_period_at_the_sample_that_saw_them() {
        let (st, w) = run(
            2000,
            &[
                s(0, 100, 1),
                s(1000, 130, 2),
                s(2000, 130, 2),
                s(3000, 131, 2),
                s(4000, 131, 2),
                s(5000, 131, 2),
            ],
        );
        assert_eq!(
            st,
            [
                since(0),
                Status::Busy,
                since(1000),
                Status::Busy,
                since(3000),
                Status::Done
            ]
        );
        assert_eq!(
            w.total(),
            Seen {
                packets: 31,
                new_flows: 1
            }
        );
    }

    #[test]
    fn a_busy_backend_is_never_done() {
        let samples: Vec<Sample> = (0..10).map(|i| s(i * 1000, i * 3, 0)).collect();
        let (st, w) = run(2000, &samples);
        assert_eq!(st[0], since(0));
        assert!(st[1..].iter().all(|x| *x == Status::Busy), "{st:?}");
        assert_eq!(w.total().packets, 27);
        assert_eq!(w.quiet(), Duration::ZERO);
    }

    #[test]
    fn the_quiet_period_is_measured_between_samples_not_counted_in_samples() {
        // Samples 1.5 s apart: a 2 s quiet period ends at the second quiet
        // sample (3 s), not at the first (1.5 s).
        let (st, _) = run(2000, &[s(0, 9, 0), s(1500, 9, 0), s(3000, 9, 0)]);
        assert_eq!(st, [since(0), since(0), Status::Done]);
        // Just short of the period is not done.
        let (st, _) = run(2000, &[s(0, 9, 0), s(1999, 9, 0)]);
        assert_eq!(st, [since(0), since(0)]);
    }

    #[test]
    fn a_counter_that_went_down_was_reset_and_counts_as_busy() {
        let (st, w) = run(1000, &[s(0, 50, 4), s(1000, 5, 1), s(2000, 5, 1)]);
        assert_eq!(st, [since(0), Status::Busy, Status::Done]);
        assert_eq!(
            w.total(),
            Seen {
                packets: 5,
                new_flows: 1
            }
        );
    }

    #[test]
    fn lines_count_what_came_since_the_previous_line() {
        let mut w = Watch::new(Duration::from_secs(10));
        w.observe(s(0, 10, 0));
        w.observe(s(1000, 14, 1));
        w.observe(s(2000, 20, 1));
        assert_eq!(
            w.take_since_line(),
            Seen {
                packets: 10,
                new_flows: 1
            }
        );
        w.observe(s(3000, 21, 1));
        assert_eq!(
            w.take_since_line(),
            Seen {
                packets: 1,
                new_flows: 0
            }
        );
        assert_eq!(w.take_since_line(), Seen::default());
        assert_eq!(
            w.total(),
            Seen {
                packets: 11,
                new_flows: 1
            }
        );
    }

    #[test]
    fn the_defaults_are_durations() {
        use lb_userspace::config::parse_duration;
        assert_eq!(parse_duration(QUIET_FOR), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration(TIMEOUT), Some(Duration::from_secs(300)));
    }
}
