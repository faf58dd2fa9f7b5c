//! `cargo xtask run`: starts hola.

use anyhow::bail;

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    bail!(
        "the hola daemon and the lab are not built yet (issue 3: the daemon and CLI); \
         today the data plane is exercised by `cargo xtask test` and measured by `cargo xtask bench dataplane`"
    )
}
