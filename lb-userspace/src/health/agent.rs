//! Load-aware weights: the agent check, after HAProxy's agent-check. A
//! small agent on the backend answers on a TCP port (or an HTTP path) with
//! one line such as `75%`, `drain`, `down`, `up` or `60% up`; hola scales
//! the backend's weight by the percentage, clamped to the agent's
//! `min_percent..=max_percent`, so one report can neither starve nor flood
//! a backend.

use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncReadExt as _, net::TcpStream};

use super::probe::{Failed, Passed, Probe};
use crate::{config::AgentConfig, model::VipAddr};

/// The longest report read (the first line is used).
const REPORT_LIMIT: usize = 512;

/// What the agent asks for, besides a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// Take flows (the default, and what `up` / `ready` restore).
    Up,
    /// No new flows; established flows stay (`drain`, `maint`).
    Drain,
    /// Out of service like a failed health check: established flows are
    /// re-balanced too (`down`, `fail`, `stopped`).
    Down,
}

impl std::fmt::Display for AgentMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentMode::Up => "up",
            AgentMode::Drain => "drain",
            AgentMode::Down => "down",
        })
    }
}

/// One parsed report: each part is optional (`75%` leaves the mode as it
/// was, `drain` the percentage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub percent: Option<u32>,
    pub mode: Option<AgentMode>,
}

/// Parses the first line of an agent's answer: words separated by spaces,
/// tabs or commas, case-insensitive. `N%` (N a whole number) sets the
/// percentage; `up`/`ready`, `drain`/`maint`, `down`/`fail`/`stopped` set
/// the mode. Anything else makes the whole report invalid (and ignored).
pub fn parse_report(text: &str) -> Result<Report, String> {
    let line = text.lines().next().unwrap_or("").trim();
    let mut r = Report::default();
    for word in line
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        let w = word.to_ascii_lowercase();
        if let Some(n) = w.strip_suffix('%') {
            let p: u32 = n
                .parse()
                .map_err(|_| format!("agent said {line:?}: {word:?} is not a percentage"))?;
            r.percent = Some(p);
            continue;
        }
        r.mode = Some(match w.as_str() {
            "up" | "ready" => AgentMode::Up,
            "drain" | "maint" => AgentMode::Drain,
            "down" | "fail" | "stopped" => AgentMode::Down,
            _ => {
                return Err(format!(
                    "agent said {line:?}: {word:?} is not one of N%, up, ready, drain, maint, \
                     down, fail, stopped"
                ));
            }
        });
    }
    if r == Report::default() {
        return Err(format!("agent said {line:?}: nothing to act on"));
    }
    Ok(r)
}

/// The percentage applied for a reported one: within the configured bounds.
pub fn clamp_percent(reported: u32, agent: &AgentConfig) -> u32 {
    reported.clamp(agent.min_percent, agent.max_percent)
}

/// `weight` scaled by `percent`, at least 1 while both are non-zero (a
/// backend the agent keeps up always gets some flows).
pub fn scaled_weight(weight: u32, percent: u32) -> u32 {
    if weight == 0 || percent == 0 {
        return 0;
    }
    let w = u64::from(weight) * u64::from(percent) / 100;
    w.clamp(1, u64::from(u32::MAX)) as u32
}

/// The agent's state for one backend, as the owner keeps it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    /// The percentage of the configured weight applied now (clamped).
    pub percent: u32,
    pub mode: AgentMode,
    /// The last answer (or why there was none).
    pub last_check: Option<Probe>,
}

impl AgentStatus {
    pub fn new(agent: &AgentConfig) -> Self {
        AgentStatus {
            percent: clamp_percent(100, agent),
            mode: AgentMode::Up,
            last_check: None,
        }
    }

    /// Applies one probe: a valid report changes the percentage and/or mode;
    /// an unreachable agent or an invalid report leaves them as they were
    /// (health is the health check's job). Returns whether the weight or
    /// mode changed.
    pub fn apply(&mut self, probe: Probe, report: Option<Report>, agent: &AgentConfig) -> bool {
        let before = (self.percent, self.mode);
        if let Some(r) = report {
            if let Some(p) = r.percent {
                self.percent = clamp_percent(p, agent);
            }
            if let Some(m) = r.mode {
                self.mode = m;
            }
        }
        self.last_check = Some(probe);
        before != (self.percent, self.mode)
    }
}

/// One backend's agent to ask.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentTarget {
    pub vip: VipAddr,
    pub backend: std::net::IpAddr,
    pub agent: AgentConfig,
}

/// Asks the agent once, bounded by its timeout: the probe (for the
/// operator) and the parsed report, if there was a valid one.
pub async fn ask(t: &AgentTarget) -> (Probe, Option<Report>) {
    let start = tokio::time::Instant::now();
    let timeout = t.agent.timeout;
    let result = tokio::time::timeout(timeout, read_report(t)).await;
    let latency_ms = start.elapsed().as_millis() as u64;
    let answer = match result {
        Ok(r) => r,
        Err(_) => Err(Failed::Timeout(timeout)),
    };
    let parsed = answer.and_then(|text| {
        let r = parse_report(&text).map_err(Failed::Report)?;
        Ok((
            Passed::Agent(text.lines().next().unwrap_or("").trim().into()),
            r,
        ))
    });
    let probe = |outcome: &Result<Passed, Failed>| Probe {
        latency_ms,
        ..Probe::of(outcome, Duration::ZERO)
    };
    match parsed {
        Ok((passed, r)) => (probe(&Ok(passed)), Some(r)),
        Err(failed) => (probe(&Err(failed)), None),
    }
}

async fn read_report(t: &AgentTarget) -> Result<String, Failed> {
    let addr = SocketAddr::new(t.backend, t.agent.port);
    if let Some(path) = &t.agent.path {
        let check = crate::config::HealthConfig {
            path: path.clone(),
            ..crate::config::HealthConfig::new(crate::config::CheckKind::Http)
        };
        let (status, body) = super::probe::http_get(&check, addr, true).await?;
        if status != 200 {
            return Err(Failed::Http(format!("agent HTTP {status}, expected 200")));
        }
        return Ok(body);
    }
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| Failed::Connect {
            addr,
            error: e.to_string(),
        })?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 128];
    // The agent writes its line and closes; a newline is enough.
    while buf.len() < REPORT_LIMIT && !buf.contains(&b'\n') {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| Failed::Read(e.to_string()))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    fn agent(min: u32, max: u32) -> AgentConfig {
        AgentConfig {
            port: 9999,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            path: None,
            min_percent: min,
            max_percent: max,
        }
    }

    #[test]
    fn reports_parse() {
        let r = |p, m| {
            Ok(Report {
                percent: p,
                mode: m,
            })
        };
        assert_eq!(parse_report("75%\n"), r(Some(75), None));
        assert_eq!(parse_report("drain"), r(None, Some(AgentMode::Drain)));
        assert_eq!(
            parse_report(" 60% UP \r\n"),
            r(Some(60), Some(AgentMode::Up))
        );
        assert_eq!(
            parse_report("50%,maint"),
            r(Some(50), Some(AgentMode::Drain))
        );
        assert_eq!(
            parse_report("down\nsecond line ignored"),
            r(None, Some(AgentMode::Down))
        );
        assert!(parse_report("").unwrap_err().contains("nothing to act on"));
        assert!(
            parse_report("7.5%")
                .unwrap_err()
                .contains("not a percentage")
        );
        assert!(
            parse_report("50% sleepy")
                .unwrap_err()
                .contains("\"sleepy\"")
        );
    }

    #[test]
    fn reports_are_clamped() {
        let a = agent(10, 100);
        assert_eq!(clamp_percent(50, &a), 50);
        assert_eq!(clamp_percent(0, &a), 10, "a 0% report cannot starve");
        assert_eq!(clamp_percent(5000, &a), 100, "a huge report cannot flood");
        let mut s = AgentStatus::new(&a);
        assert_eq!((s.percent, s.mode), (100, AgentMode::Up));
        let ok = |d: &str| Probe {
            ok: true,
            detail: d.into(),
            latency_ms: 1,
        };
        assert!(s.apply(ok("1%"), parse_report("1%").ok(), &a));
        assert_eq!(s.percent, 10);
        assert!(!s.apply(ok("3%"), parse_report("3%").ok(), &a), "still 10");
        assert!(s.apply(ok("drain"), parse_report("drain").ok(), &a));
        assert_eq!((s.percent, s.mode), (10, AgentMode::Drain));
        // An agent that cannot be reached changes nothing.
        let failed = Probe {
            ok: false,
            detail: "timeout".into(),
            latency_ms: 500,
        };
        assert!(!s.apply(failed, None, &a));
        assert_eq!((s.percent, s.mode), (10, AgentMode::Drain));
        assert_eq!(scaled_weight(100, 50), 50);
        assert_eq!(scaled_weight(1, 10), 1, "at least 1");
        assert_eq!(scaled_weight(0, 50), 0);
        assert_eq!(scaled_weight(10_000, 1000), 100_000);
    }

    #[tokio::test]
    async fn asks_over_tcp_and_http() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            // TCP agent: one line, connection kept open (a newline ends it).
            let (mut c, _) = l.accept().await.expect("accept");
            c.write_all(b"42% up\n").await.expect("write");
            // HTTP agent.
            let (mut c, _) = l.accept().await.expect("accept");
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf).await;
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ndrain\n")
                .await
                .expect("write");
            std::future::pending::<()>().await;
        });
        let mut t = AgentTarget {
            vip: VipAddr {
                addr: "198.18.1.1".parse().expect("ip"),
                port: 80,
                proto: crate::model::Proto::Tcp,
            },
            backend: "127.0.0.1".parse().expect("ip"),
            agent: AgentConfig {
                port,
                ..agent(10, 100)
            },
        };
        let (p, r) = ask(&t).await;
        assert_eq!(p.detail, "agent: 42% up");
        assert_eq!(
            r,
            Some(Report {
                percent: Some(42),
                mode: Some(AgentMode::Up)
            })
        );
        t.agent.path = Some("/load".into());
        let (p, r) = ask(&t).await;
        assert!(p.ok, "{p:?}");
        assert_eq!(r.and_then(|r| r.mode), Some(AgentMode::Drain));
    }
}
