//! `hola doctor`: the set-up problems that make a balancer or a backend
//! "not forward packets" (rp_filter, a VIP missing from a backend's
//! loopback, ARP answered for the VIP, no MTU headroom for a tunnel, XDP in
//! generic mode, a daemon not running, ...), each found by one check.
//!
//! Every check is a pure function from what was read ([`host`], [`iface`],
//! [`balancer`], [`backend`]) to a [`Check`]: ok, warn or fail, what it saw
//! and the fix. [`read`] does the reading (files under /proc and /sys,
//! rtnetlink, bpffs, the daemon's stats), so the checks are tested with
//! values and the reading once against a real lab.

pub mod backend;
pub mod balancer;
pub mod host;
pub mod iface;
pub mod read;

use serde::{Deserialize, Serialize};

/// A check's verdict, worst last (the report's status is the worst).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// What `hola doctor` exits with: 0, 1, 2.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked: "kernel", "rp_filter eth0", "next hop 198.18.0.11".
    pub name: String,
    pub status: Status,
    /// What the check saw.
    pub saw: String,
    /// What to do about it; `None` when ok.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, saw: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Ok,
            saw: saw.into(),
            fix: None,
        }
    }

    pub fn warn(name: impl Into<String>, saw: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Warn,
            saw: saw.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(name: impl Into<String>, saw: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Fail,
            saw: saw.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check of one `hola doctor` run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The worst status of the checks (ok when there is none).
    pub status: Status,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Self {
        let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
        Report { status, checks }
    }

    /// The report for people: one line per check, the fix under it.
    pub fn text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            out += &format!("{:<4}  {:<width$}  {}\n", c.status.label(), c.name, c.saw);
            if let Some(fix) = &c.fix {
                out += &format!("{:<4}  {:<width$}  fix: {fix}\n", "", "");
            }
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        out += &format!(
            "{}: {} ok, {} warn, {} fail\n",
            self.status.label(),
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_check_decides_the_status_and_exit_code() {
        let r = Report::new(vec![
            Check::ok("kernel", "6.1.0"),
            Check::warn("jit", "off", "sysctl -w net.core.bpf_jit_enable=1"),
        ]);
        assert_eq!(r.status, Status::Warn);
        assert_eq!(r.status.exit_code(), 1);
        assert_eq!(Report::new(vec![]).status.exit_code(), 0);
        let r = Report::new(vec![Check::fail("x", "y", "z"), Check::ok("a", "b")]);
        assert_eq!(r.status.exit_code(), 2);
    }

    #[test]
    fn text_puts_the_fix_under_its_check() {
        let r = Report::new(vec![
            Check::ok("kernel", "6.1.0"),
            Check::fail("rp_filter eth0", "1 (strict)", "sysctl -w x=2"),
        ]);
        assert_eq!(
            r.text(),
            "ok    kernel          6.1.0\n\
             fail  rp_filter eth0  1 (strict)\n\
             \x20                     fix: sysctl -w x=2\n\
             fail: 1 ok, 0 warn, 1 fail\n"
        );
    }

    #[test]
    fn json_names_statuses_in_lowercase() {
        let r = Report::new(vec![Check::warn("a", "b", "c")]);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["status"], "warn");
        assert_eq!(j["checks"][0]["fix"], "c");
    }
}
