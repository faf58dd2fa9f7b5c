//! `hola apply FILE` and `hola config diff FILE`: a file's VIPs, backends
//! and checks sent to the daemon as the whole desired state, or only the
//! preview of what that would change and move.

use std::path::Path;

use hyper::Method;
use lb_userspace::{
    api::{ApplyRequest, paths},
    client,
    command::ApplyReport,
    config,
};

/// Reads `file` (every error in it named with its line, nothing sent
/// then), sends its VIPs, prints the daemon's report.
pub(super) async fn apply(
    socket: &Path,
    file: &Path,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let c = config::load(file).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nnothing was changed: fix {} and apply it again",
            file.display()
        )
    })?;
    let req = ApplyRequest {
        file: file.display().to_string(),
        vips: c.vips,
        dry_run,
    };
    let body = serde_json::to_string(&req)?;
    let text = client::ok(socket, Method::POST, paths::APPLY, Some(body)).await?;
    let report: ApplyReport = serde_json::from_str(&text)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
