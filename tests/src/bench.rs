//! What the benchmark binaries share: the median, and the machine they ran
//! on (docs/benchmarks.md asks for kernel, CPU model and clocksource).

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Kernel release, CPU model and clocksource, as JSON fields.
pub fn machine() -> serde_json::Map<String, serde_json::Value> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let mut m = serde_json::Map::new();
    m.insert("kernel".into(), read("/proc/sys/kernel/osrelease").into());
    m.insert("cpu".into(), cpu.into());
    m.insert(
        "clocksource".into(),
        read("/sys/devices/system/clocksource/clocksource0/current_clocksource").into(),
    );
    m
}
