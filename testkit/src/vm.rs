//! A throwaway VM with IPVS (this machine's kernel has none): Debian's kernel package booted
//! under `qemu-system-x86_64 -accel tcg` with a small initramfs — busybox and the modules that
//! reach the host's root over 9p — whose `/init` mounts this machine's root read-only under a
//! RAM overlay, runs one script there (host tools, the test's binaries) and powers off. A
//! boot takes a few seconds.
//!
//! Needs `qemu-system-x86`, `busybox-static`, `ipvsadm`, `cpio` and `kmod` (`.ci/run` installs
//! them) and fetches the kernel package with `apt-get download` into `target/ipvs-vm/` once.
//! Nothing runs on the host's network: the VM has no network device at all, and its writes go
//! to RAM.
//!
//! One VM at a time on the machine ([`lock`]): under TCG a VM takes a whole core, and VMs side by
//! side on a loaded two-core machine starve each other. Its limits measure progress, not a total:
//! the VM is killed when its console stays silent too long ([`FIRST_OUTPUT_LIMIT`] until it
//! prints anything, then [`SILENCE_LIMIT`] between lines), so a long script that keeps printing
//! is never cut short and a stuck VM is still caught.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::TempDir;

/// How long a VM may take to print its first line: the kernel boots `quiet`, so the first thing
/// it prints is `/init`'s (a boot is ~5 s on an idle machine, far more on a loaded one).
pub const FIRST_OUTPUT_LIMIT: Duration = Duration::from_secs(300);

/// How long a running VM may print nothing before it is taken to be stuck and killed.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(120);

/// Where the kernel package is unpacked, and the lock file that keeps VMs one at a time.
fn cache_dir() -> PathBuf {
    crate::cli::root().join("target/ipvs-vm")
}

/// Held while a VM runs: the only one on this machine, for this process (a mutex) and for every
/// other test binary (an exclusive `flock` on `target/ipvs-vm/vm.lock`). Released on drop.
pub struct VmLock {
    _file: fs::File,
    _local: MutexGuard<'static, ()>,
}

/// Waits until no other VM runs (in this process or any other test binary), then holds the
/// machine's VM slot until the returned guard is dropped.
pub fn lock() -> VmLock {
    static LOCAL: Mutex<()> = Mutex::new(());
    // A test that panicked while holding it poisoned it; the VM it ran is gone all the same.
    let local = LOCAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = cache_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join("vm.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock(2) on a descriptor we own; the lock goes with the file when it is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    VmLock {
        _file: file,
        _local: local,
    }
}

/// Printed by `/init` around the script's output.
const BEGIN: &str = "=== kprs-vm-begin";
const END: &str = "=== kprs-vm-end";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (see testkit/src/vm.rs for what to install)")
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
    let cache = cache_dir();
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
    run_in_vm_for(script, memory_mib, SILENCE_LIMIT)
}

/// [`run_in_vm`] with its own limit on silence between console lines (by-hand scale runs run
/// commands that print nothing for minutes under TCG).
pub fn run_in_vm_for(script: &str, memory_mib: u32, silence: Duration) -> String {
    // Held until the VM is gone; it also keeps two tests from fetching the kernel at once.
    let _one_vm = lock();
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
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-m"])
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
        .args(["-append", "console=ttyS0 quiet panic=-1"]);
    let out = watch(qemu, silence);
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let begin = console
        .find(BEGIN)
        .unwrap_or_else(|| panic!("the VM did not run the script ({}):\n{console}", out.how));
    let body = &console[begin + BEGIN.len()..];
    let end = body
        .find(END)
        .unwrap_or_else(|| panic!("the VM did not finish the script ({}):\n{console}", out.how));
    body[..end].trim_start_matches('\n').to_string()
}

/// What a VM printed on its console, and how it ended.
struct Console {
    stdout: Vec<u8>,
    /// qemu's exit status, or why it was killed.
    how: String,
}

/// Runs `qemu` to its end, killing it once its console has been silent for `silence` (for
/// [`FIRST_OUTPUT_LIMIT`] before it prints anything), or once it has printed the script's end
/// marker and then falls silent for a few seconds instead of powering off.
fn watch(mut qemu: Command, silence: Duration) -> Console {
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 is installed");
    let mut pipe = child.stdout.take().expect("piped stdout");
    let mut errors = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = errors.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let mut stdout: Vec<u8> = Vec::new();
    let mut finished = false;
    let mut killed = None;
    loop {
        let limit = if finished {
            Duration::from_secs(10)
        } else if stdout.is_empty() {
            FIRST_OUTPUT_LIMIT
        } else {
            silence
        };
        match rx.recv_timeout(limit) {
            Ok(chunk) => {
                // Only the new bytes (and the marker's length before them) can complete it: the
                // console of a long script runs to megabytes.
                let from = stdout.len().saturating_sub(END.len());
                stdout.extend(chunk);
                finished = finished || contains(&stdout[from..], END.as_bytes());
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                if !finished {
                    killed = Some(format!(
                        "killed: its console was silent for {limit:?} ({:?} after it started)",
                        started.elapsed()
                    ));
                }
                break;
            }
        }
    }
    let status = child.wait().expect("wait for qemu");
    let _ = reader.join();
    let stderr = stderr.join().unwrap_or_default();
    let how = killed.unwrap_or_else(|| status.to_string());
    let how = if stderr.trim().is_empty() {
        how
    } else {
        format!("{how}; qemu's stderr: {}", stderr.trim())
    };
    Console { stdout, how }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
