//! Checks of the kernel hola runs on: its version, the BPF JIT, BTF, bpffs.

use super::Check;

/// The oldest kernel hola runs on: XDP through a BPF link (5.9), which is
/// what lets the data plane outlive `hola run` with its link pinned.
pub const MIN_KERNEL: (u32, u32) = (5, 9);

/// The oldest kernel hola is supported on (the README's requirements):
/// older ones may lack verifier features the balancer relies on.
pub const SUPPORTED_KERNEL: (u32, u32) = (6, 6);

/// `major.minor` of a kernel release string such as "6.1.0-18-amd64".
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The kernel's release (`uname -r`).
pub fn kernel(release: &str) -> Check {
    let name = "kernel";
    match parse_release(release) {
        Some(v) if v >= SUPPORTED_KERNEL => Check::ok(name, release.to_string()),
        Some(v) if v >= MIN_KERNEL => Check::warn(
            name,
            format!(
                "{release}: older than {}.{}, the oldest kernel hola is supported on",
                SUPPORTED_KERNEL.0, SUPPORTED_KERNEL.1
            ),
            format!(
                "run hola on a kernel {}.{} or newer; if hola run loads here, the data plane works",
                SUPPORTED_KERNEL.0, SUPPORTED_KERNEL.1
            ),
        ),
        Some(_) => Check::fail(
            name,
            format!(
                "{release}: older than {}.{}, which attaching XDP through a BPF link needs",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            format!(
                "run hola on a kernel {}.{} or newer",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        None => Check::warn(
            name,
            format!("release {release:?} is not MAJOR.MINOR..."),
            format!(
                "make sure the kernel is {}.{} or newer",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
    }
}

/// The BPF JIT: `/proc/sys/net/core/bpf_jit_enable` (`None`: missing; a
/// network namespace other than the host's has no such file), and whether
/// the program hola attached was JIT-compiled (`None`: none seen).
pub fn jit(value: Option<&str>, attached_jited: Option<bool>) -> Check {
    let name = "bpf jit";
    let fix = "sysctl -w net.core.bpf_jit_enable=1 (and net.core.bpf_jit_enable = 1 in \
               /etc/sysctl.d/ to keep it)";
    match (value.map(str::trim), attached_jited) {
        (Some("1"), _) => Check::ok(name, "net.core.bpf_jit_enable = 1"),
        (Some("2"), _) => Check::warn(
            name,
            "net.core.bpf_jit_enable = 2: the JIT writes every program to the kernel log",
            fix,
        ),
        (Some(v), _) => Check::warn(
            name,
            format!(
                "net.core.bpf_jit_enable = {v}: programs run interpreted, several times slower"
            ),
            fix,
        ),
        (None, Some(true)) => Check::ok(
            name,
            "the attached program is JIT-compiled (net.core.bpf_jit_enable is only readable \
             from the host's network namespace)",
        ),
        (None, Some(false)) => Check::warn(
            name,
            "the attached program is not JIT-compiled: it runs interpreted, several times slower",
            format!("{fix} in the host's network namespace, then restart hola"),
        ),
        (None, None) => Check::warn(
            name,
            "/proc/sys/net/core/bpf_jit_enable is missing (this is not the host's network \
             namespace, or the kernel has no BPF JIT) and no attached program shows it",
            "run doctor once hola runs, or check net.core.bpf_jit_enable on the host",
        ),
    }
}

/// Whether `/sys/kernel/btf/vmlinux` exists.
pub fn btf(present: bool) -> Check {
    if present {
        Check::ok("btf", "/sys/kernel/btf/vmlinux present")
    } else {
        Check::warn(
            "btf",
            "/sys/kernel/btf/vmlinux is missing: the kernel has no BTF, so bpftool and the \
             verifier's messages cannot name hola's types",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    }
}

/// Whether a bpffs is mounted at /sys/fs/bpf, given /proc/self/mounts.
pub fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    })
}

/// bpffs at /sys/fs/bpf, where hola keeps its pins.
pub fn bpffs(mounts: &str) -> Check {
    if bpffs_mounted(mounts) {
        Check::ok("bpffs", "mounted at /sys/fs/bpf")
    } else {
        Check::fail(
            "bpffs",
            "no bpffs at /sys/fs/bpf in this mount namespace: hola's pins (the data plane that \
             outlives `hola run`) are not here",
            "mount -t bpf bpf /sys/fs/bpf (systemd's sys-fs-bpf.mount does it at boot); run \
             doctor in the mount namespace hola runs in (nsenter --net, not ip netns exec)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_release("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_release("5.10"), Some((5, 10)));
        assert_eq!(parse_release("x"), None);
        assert_eq!(kernel("6.18.44-fc").status, Status::Ok);
        assert_eq!(kernel("6.6.0").status, Status::Ok);
        assert_eq!(kernel("5.9.0").status, Status::Warn);
        assert_eq!(kernel("6.1.0-18-amd64").status, Status::Warn);
        let old = kernel("5.4.0-150-generic");
        assert_eq!(old.status, Status::Fail);
        assert!(old.saw.contains("older than 5.9"), "{}", old.saw);
        assert_eq!(kernel("weird").status, Status::Warn);
    }

    #[test]
    fn jit_settings() {
        assert_eq!(jit(Some("1\n"), None).status, Status::Ok);
        assert_eq!(jit(Some("2\n"), Some(true)).status, Status::Warn);
        let off = jit(Some("0\n"), None);
        assert_eq!(off.status, Status::Warn);
        assert!(off.fix.unwrap().contains("bpf_jit_enable=1"));
        // In a network namespace: the attached program tells.
        assert_eq!(jit(None, Some(true)).status, Status::Ok);
        assert_eq!(jit(None, Some(false)).status, Status::Warn);
        assert_eq!(jit(None, None).status, Status::Warn);
    }

    #[test]
    fn bpffs_is_read_from_mounts() {
        let m = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert_eq!(bpffs(m).status, Status::Ok);
        assert_eq!(
            bpffs("sysfs /sys sysfs rw 0 0\nnone /sys/fs/bpf tmpfs rw 0 0\n").status,
            Status::Fail
        );
        assert_eq!(btf(true).status, Status::Ok);
        assert_eq!(btf(false).status, Status::Warn);
    }
}
