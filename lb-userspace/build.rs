use aya_build::{Package, Toolchain};

/// Builds the eBPF programs in `lb-ebpf` with the nightly toolchain; the
/// objects land in OUT_DIR and are embedded once, by `src/programs.rs`.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
