//! How much of the verifier's budget each program of the balancer uses: the
//! kernel gives up on a program once it has processed 1,000,000
//! instructions (`BPF_COMPLEXITY_LIMIT_INSNS`), and a program near that
//! limit fails to load after an innocent-looking change (a flag carried
//! through a function doubles the states explored). This test loads the
//! balancer as the daemon does, prints each program's count, and fails when
//! one passes 80 % of the limit, so the margin shrinking is seen before a
//! load fails.

use hola_tests::fixture::require_root;
use lb_userspace::dataplane::{Dataplane, DataplaneConfig};

const LIMIT: u32 = 1_000_000;
const BUDGET: u32 = LIMIT / 10 * 8;

#[test]
fn every_program_verifies_within_80_percent_of_the_limit() {
    require_root();
    let _dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 1024,
        ..Default::default()
    })
    .expect("loading the balancer (the verifier must accept it)");
    let mut seen = Vec::new();
    for p in aya::programs::loaded_programs() {
        let p = p.expect("reading a loaded program's info");
        // The kernel keeps 15 characters of a program's name.
        let name = p.name_as_str().unwrap_or("").to_string();
        if !name.starts_with("hola") {
            continue;
        }
        let n = p
            .verified_instruction_count()
            .unwrap_or_else(|| panic!("{name}: the kernel reports no verified_insns"));
        println!(
            "{name:<16} {n:>9} instructions processed ({:.1} % of the limit)",
            f64::from(n) * 100.0 / f64::from(LIMIT)
        );
        seen.push((name, n));
    }
    // Programs of other tests may be loaded at the same time: only ours
    // count, and each of ours must be there.
    for want in [
        "hola_lb",
        "hola_nat_reques",
        "hola_nat_reply",
        "hola_frag",
        "hola_frag_reply",
        "hola_too_big",
    ] {
        assert!(
            seen.iter().any(|(n, _)| n == want),
            "{want} is not among the loaded programs: {seen:?}"
        );
    }
    let over: Vec<_> = seen.iter().filter(|(_, n)| *n > BUDGET).collect();
    assert!(
        over.is_empty(),
        "programs over {BUDGET} verified instructions (80 % of the kernel's {LIMIT}): {over:?}; \
         split the work (a tail call) or cut the branches the verifier must explore"
    );
}
