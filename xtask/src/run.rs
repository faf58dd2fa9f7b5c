//! `cargo xtask run`: will start the `hola` daemon on a NIC, or in the lab when
//! no NIC is named. Neither exists yet; they arrive with issue 3.

use anyhow::{Result, bail};

use crate::toolchain;

pub(crate) fn run() -> Result<()> {
    toolchain::setup(false)?;
    bail!(
        "the `hola` daemon and the lab are not built yet (they arrive with issue 3), so there is \
         nothing to run; `cargo xtask test` runs the tests that exist"
    )
}
