//! A throwaway VM with IPVS (this machine's kernel has none): Debian's kernel package booted
//! under `qemu-system-x86_64 -accel tcg` with a small initramfs — busybox and the modules that
//! reach the host's root over 9p — whose `/init` mounts this machine's root read-only under a
//! RAM overlay, runs one script there (host tools, the test's binaries) and powers off. The
//! recipe is `shared/reference/kernel-lab.md`'s "IPVS" section; a boot takes a few seconds.
//!
//! Needs `qemu-system-x86`, `busybox-static`, `ipvsadm`, `cpio` and `kmod` (`.ci/run` installs
//! them) and fetches the kernel package with `apt-get download` into `target/ipvs-vm/` once.
//! Nothing runs on the host's network: the VM has no network device at all, and its writes go
//! to RAM.

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
    let dir = TempDir::new("ipvs-vm-files");
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    let prelude = format!(
        "cd '{}'\nip link add kube-ipvs0 type dummy\nip link set kube-ipvs0 up\n\
         ip route add 10.0.0.0/8 dev kube-ipvs0\nip -6 route add fd00::/8 dev kube-ipvs0\n",
        dir.path().display()
    );
    run_in_vm(&format!("{prelude}{script}"), 256)
}

/// Boots the VM with this machine's root directory shared read-only under a RAM overlay, so
/// every host tool (`ipvsadm`, `ipset`, `iptables`, `ip`) and the test's own binaries run in it,
/// at their host paths; the kernel loads modules on demand from the unpacked package (IPVS and
/// `dummy` are loaded first). Runs `script` with `sh` as root in the VM (`lo` up, no other
/// network device) and returns what it printed. `memory_mib` is the VM's RAM.
pub fn run_in_vm(script: &str, memory_mib: u32) -> String {
    run_in_vm_for(script, memory_mib, BOOT_TIMEOUT)
}

/// [`run_in_vm`] with its own time limit (by-hand scale runs take minutes under TCG).
pub fn run_in_vm_for(script: &str, memory_mib: u32, limit: Duration) -> String {
    let (root, version) = kernel();
    let tmp = TempDir::new("ipvs-vm");
    let init = tmp.path().join("initrd");
    for d in [
        "bin", "proc", "sys", "dev", "mods", "lower", "rw", "newroot",
    ] {
        fs::create_dir_all(init.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", init.join("bin/busybox")).expect("busybox-static is installed");
    // What it takes to reach the host's root: virtio-pci, 9p over virtio, and overlayfs.
    let mut mods = Vec::new();
    for m in [
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/net/9p/9pnet_virtio.ko",
        "kernel/fs/9p/9p.ko",
        "kernel/fs/overlayfs/overlay.ko",
    ] {
        for dep in modules_for(&root, &version, m) {
            if !mods.contains(&dep) {
                mods.push(dep);
            }
        }
    }
    for (i, m) in mods.iter().enumerate() {
        let name = Path::new(m).file_name().unwrap().to_str().unwrap();
        fs::copy(
            root.join(format!("lib/modules/{version}/{m}")),
            init.join(format!("mods/{i:02}-{name}")),
        )
        .unwrap();
    }
    let script_path = tmp.path().join("script");
    fs::write(&script_path, script).unwrap();
    let modules = root.join(format!("lib/modules/{version}"));
    let modules = modules.display();
    // busybox's modprobe serves the kernel's on-demand module requests from the package's
    // modules; crc32c_generic goes first or libcrc32c (and ip_vs) fail with "Unknown symbol".
    let init_script = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         for m in /mods/*.ko; do insmod $m || echo \"insmod $m failed\"; done\n\
         mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || echo 'mount 9p failed'\n\
         mount -t tmpfs tmpfs /rw\nmkdir -p /rw/upper /rw/work\n\
         mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || echo 'mount overlay failed'\n\
         mkdir -p /lib/modules/{version} /newroot/lib/modules/{version}\n\
         mount --bind /lower{modules} /lib/modules/{version}\n\
         mount --bind /lower{modules} /newroot/lib/modules/{version}\n\
         echo /bin/modprobe > /proc/sys/kernel/modprobe\n\
         for m in crc32c_generic ip_vs ip_vs_rr dummy; do modprobe $m || echo \"modprobe $m failed\"; done\n\
         mount --bind /proc /newroot/proc\nmount --bind /sys /newroot/sys\nmount --bind /dev /newroot/dev\n\
         mount -t tmpfs tmpfs /newroot/run\n\
         ip link set lo up\n\
         echo '{BEGIN}'\nchroot /newroot /bin/sh -c 'cd /tmp && sh {script}' 2>&1\necho '{END}'\npoweroff -f\n",
        script = script_path.display(),
    );
    fs::write(init.join("init"), init_script).unwrap();
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
        .arg(limit.as_secs().to_string())
        .args(["qemu-system-x86_64", "-accel", "tcg", "-m"])
        .arg(memory_mib.to_string())
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-kernel")
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
