//! BGP announcement through BIRD 2 (docs/cluster.md): the announcer task
//! writes one route per VIP address the owner wants announced into the
//! `[bgp]` table, with hola's route protocol number, and deletes it to
//! withdraw; BIRD imports that table (`protocol kernel ... learn`) and
//! announces its routes to the routers. hola never speaks BGP itself and
//! never edits BIRD's configuration while it runs: `hola bgp config`
//! prints the fragment to install once (`bird.rs`).
//!
//! The owner decides (it knows the backends' health) and publishes an
//! [`Announce`] on a watch channel; this task consumes it. The task syncs
//! the table with the latest decision when it changes and once a second
//! (a route deleted by hand comes back; a failed write is retried).

pub mod bird;
pub mod routes;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::BgpConfig;
use crate::owner::{Announce, Want};
pub use routes::Table;

/// How often the table is compared with the decision even if nothing
/// changed.
pub const RESYNC: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    #[error("opening a netlink socket to write hola's routes: {0}")]
    Socket(std::io::Error),
    #[error("starting a runtime for netlink: {0}")]
    Runtime(std::io::Error),
    #[error("netlink {what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
}

impl Table {
    pub fn of(b: &BgpConfig) -> Self {
        Table {
            table: b.table,
            protocol: b.route_protocol,
        }
    }
}

fn connect() -> Result<rtnetlink::Handle, BgpError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(BgpError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The announcer: follows the owner's decisions in `wanted` until
/// `shutdown`; then, with `withdraw_on_stop`, deletes every route of
/// hola's (otherwise they stay: the data plane keeps forwarding).
pub async fn run(
    cfg: BgpConfig,
    mut wanted: watch::Receiver<Option<Announce>>,
    shutdown: CancellationToken,
) {
    let t = Table::of(&cfg);
    let h = match connect() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "bgp: cannot write routes; no VIP is announced or withdrawn until hola run restarts");
            return;
        }
    };
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            r = wanted.changed() => if r.is_err() { break },
            _ = tick.tick() => {}
        }
        let want = wanted.borrow_and_update().clone();
        let Some(want) = want else { continue };
        match sync(&h, t, &want).await {
            Ok(()) => last_error = None,
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "bgp: writing routes failed; retrying every second");
                    last_error = Some(e);
                }
            }
        }
    }
    if cfg.withdraw_on_stop {
        match withdraw_all(&h, t).await {
            Ok(gone) => tracing::info!(
                routes = gone.len(),
                "bgp: withdrew every VIP on stop (withdraw_on_stop)"
            ),
            Err(e) => tracing::error!(error = %e, "bgp: withdrawing on stop failed"),
        }
    } else {
        tracing::info!(
            "bgp: routes stay announced while the data plane forwards (withdraw_on_stop = false)"
        );
    }
}

/// Makes the table hold what `want` says.
async fn sync(h: &rtnetlink::Handle, t: Table, want: &Announce) -> Result<(), BgpError> {
    let have = routes::list(h, t).await?;
    for (addr, w) in &want.routes {
        match (w, have.contains(addr)) {
            (Want::Announce, false) => {
                routes::add(h, t, *addr).await?;
                tracing::info!(vip = %addr, table = t.table, "bgp: announced (route added)");
            }
            (Want::Withdraw, true) => {
                routes::del(h, t, *addr).await?;
                tracing::info!(vip = %addr, table = t.table, "bgp: withdrawn (route deleted)");
            }
            _ => {}
        }
    }
    for addr in have.iter().filter(|a| !want.routes.contains_key(a)) {
        routes::del(h, t, *addr).await?;
        tracing::info!(vip = %addr, "bgp: withdrawn: no VIP at this address any more");
    }
    Ok(())
}

/// Deletes every route of hola's in `t`; returns their addresses.
pub async fn withdraw_all(h: &rtnetlink::Handle, t: Table) -> Result<BTreeSet<IpAddr>, BgpError> {
    let have = routes::list(h, t).await?;
    for a in &have {
        routes::del(h, t, *a).await?;
    }
    Ok(have)
}

/// `withdraw_all` outside a runtime (`hola down`).
pub fn withdraw_all_blocking(t: Table) -> Result<BTreeSet<IpAddr>, BgpError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BgpError::Runtime)?;
    rt.block_on(async {
        let h = connect()?;
        withdraw_all(&h, t).await
    })
}
