//! A throwaway VM with IPVS (this machine's kernel has none): Debian's kernel package booted
//! under `qemu-system-x86_64 -accel tcg` with a small initramfs — busybox, `ipvsadm` and its
//! libraries, and the modules `ip_vs_rr` needs — whose `/init` runs one script and powers off.
//! The recipe is `shared/reference/kernel-lab.md`'s "IPVS" section; a boot takes about 5 s.
//!
//! Needs `qemu-system-x86`, `busybox-static`, `ipvsadm`, `cpio` and `kmod` (`.ci/run` installs
//! them) and fetches the kernel package with `apt-get download` into `target/ipvs-vm/` once.
//! Nothing runs on the host's network: the VM has no network device at all.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::TempDir;

/// How long one boot may take before it is killed (TCG is slow; a boot is ~5 s here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Printed by `/init` around the script's output.
const BEGIN: &str = "=== kprs-vm-begin";
const END: &str = "=== kprs-vm-end";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (see tests/support/vm.rs for what to install)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The unpacked kernel package: `(root, version)`, fetched and unpacked once per target dir.
fn kernel() -> (PathBuf, String) {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ipvs-vm");
    fs::create_dir_all(&cache).unwrap();
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
    let package = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .unwrap_or_else(|| panic!("no kernel package behind linux-image-amd64:\n{deps}"))
        .to_string();
    let version = package.trim_start_matches("linux-image-").to_string();
    let root = cache.join(&version);
    if !root
        .join("boot")
        .join(format!("vmlinuz-{version}"))
        .exists()
    {
        let _ = fs::remove_dir_all(&root);
        run(Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&cache));
        let deb = fs::read_dir(&cache)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&package) && n.ends_with(".deb"))
            })
            .expect("the downloaded kernel package");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        run(Command::new("depmod").arg("-b").arg(&root).arg(&version));
        let _ = fs::remove_file(&deb);
    }
    (root, version)
}

/// The modules `module` needs, in load order, then `module` itself (paths relative to the
/// version's module directory).
fn modules_for(root: &Path, version: &str, module: &str) -> Vec<String> {
    let dep = fs::read_to_string(root.join(format!("lib/modules/{version}/modules.dep"))).unwrap();
    let line = dep
        .lines()
        .find(|l| l.starts_with(&format!("{module}:")))
        .unwrap_or_else(|| panic!("{module} not in modules.dep"));
    // modules.dep lists dependencies nearest first: load them in reverse.
    let mut out: Vec<String> = line
        .split_once(':')
        .unwrap()
        .1
        .split_whitespace()
        .rev()
        .map(str::to_string)
        .collect();
    out.push(module.to_string());
    out
}

/// Boots the VM with `files` (name → contents) in its root directory and runs `script` (a
/// busybox `sh` script) after the IPVS modules are loaded, `lo` is up and a dummy `kube-ipvs0`
/// routes 10.0.0.0/8 and fd00::/8 (so real servers there are routable); returns what the
/// script printed.
pub fn run_in_ipvs_vm(files: &[(&str, &str)], script: &str) -> String {
    let (root, version) = kernel();
    let tmp = TempDir::new("ipvs-vm");
    let init = tmp.path().join("initrd");
    for d in ["bin", "sbin", "proc", "sys", "dev", "tmp", "mods"] {
        fs::create_dir_all(init.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", init.join("bin/busybox")).expect("busybox-static is installed");
    let ipvsadm = run(Command::new("sh").args(["-c", "command -v ipvsadm"]));
    let ipvsadm = ipvsadm.trim();
    fs::copy(ipvsadm, init.join("sbin/ipvsadm")).expect("ipvsadm is installed");
    for lib in run(Command::new("ldd").arg(ipvsadm))
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = init.join(lib.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(lib, &dest).unwrap();
    }
    // crc32c_generic first: otherwise libcrc32c (and ip_vs) fail with "Unknown symbol crc32c".
    let mut mods = vec!["kernel/crypto/crc32c_generic.ko".to_string()];
    mods.extend(modules_for(
        &root,
        &version,
        "kernel/net/netfilter/ipvs/ip_vs_rr.ko",
    ));
    mods.push("kernel/drivers/net/dummy.ko".to_string());
    for (i, m) in mods.iter().enumerate() {
        let name = Path::new(m).file_name().unwrap().to_str().unwrap();
        fs::copy(
            root.join(format!("lib/modules/{version}/{m}")),
            init.join(format!("mods/{i:02}-{name}")),
        )
        .unwrap();
    }
    for (name, text) in files {
        fs::write(init.join(name), text).unwrap();
    }
    fs::write(init.join("script"), script).unwrap();
    fs::write(
        init.join("init"),
        format!(
            "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\n\
             mount -t sysfs sys /sys\nfor m in /mods/*.ko; do insmod $m || echo \"insmod $m failed\"; done\n\
             ip link set lo up\nip link add kube-ipvs0 type dummy\nip link set kube-ipvs0 up\n\
             ip route add 10.0.0.0/8 dev kube-ipvs0\nip -6 route add fd00::/8 dev kube-ipvs0\n\
             echo '{BEGIN}'\nsh /script 2>&1\necho '{END}'\npoweroff -f\n"
        ),
    )
    .unwrap();
    fs::set_permissions(
        init.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cpio = tmp.path().join("initrd.cpio");
    run(Command::new("sh").args([
        "-c",
        &format!(
            "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
            init.display(),
            cpio.display()
        ),
    ]));
    let out = Command::new("timeout")
        .arg(BOOT_TIMEOUT.as_secs().to_string())
        .args(["qemu-system-x86_64", "-accel", "tcg", "-m", "256"])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(root.join(format!("boot/vmlinuz-{version}")))
        .arg("-initrd")
        .arg(&cpio)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .output()
        .expect("qemu-system-x86_64 is installed");
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let begin = console
        .find(BEGIN)
        .unwrap_or_else(|| panic!("the VM did not run the script ({}):\n{console}", out.status));
    let body = &console[begin + BEGIN.len()..];
    let end = body
        .find(END)
        .unwrap_or_else(|| panic!("the VM did not finish the script:\n{console}"));
    body[..end].trim_start_matches('\n').to_string()
}
