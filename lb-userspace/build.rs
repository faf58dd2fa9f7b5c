use aya_build::{Package, Toolchain};

/// Builds the eBPF programs in `lb-ebpf` with the nightly toolchain; the
/// objects land in OUT_DIR and are embedded once, by `src/programs.rs`.
///
/// The balancer is built twice: first with the `no-trace` feature (its
/// `hola trace` hooks compiled out), kept as `hola-no-trace` for
/// `bench-dataplane`'s comparison, then as it runs. Both builds share one
/// target directory, so the second compiles only lb-ebpf's own binaries
/// again. The daemon never references the second object, so the linker
/// leaves it out of `hola`.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let build = |features: &[&str]| {
        aya_build::build_ebpf(
            [Package {
                name: "lb-ebpf",
                root_dir: root,
                features,
                ..Default::default()
            }],
            Toolchain::default(),
        )
    };
    build(&["no-trace"])?;
    // aya-build names each object after its binary: move this one aside
    // before the build as it runs writes `hola` again.
    let built = out_dir.join("hola");
    if built.exists() {
        std::fs::rename(&built, out_dir.join("hola-no-trace"))?;
    }
    build(&[])
}
