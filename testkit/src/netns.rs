//! A network namespace owned by one test, deleted when dropped (also on panic); [`in_ns`] to run
//! code on a thread inside one.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

/// Prefix of every namespace (and temp dir) the harness creates: `kprs-<pid>-<counter>-<tag>`.
pub const PREFIX: &str = "kprs-";

/// Runs `f` on a fresh thread inside `ns`'s network namespace (`setns`, then a check that the
/// thread got there) and returns what it returns; a panic in `f` fails the test. For code that
/// opens its (netlink) sockets in the calling thread's namespace.
pub fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = ns.path();
    thread::scope(|s| {
        s.spawn(move || {
            let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
            // SAFETY: setns(2) on a namespace file descriptor we own; it only moves this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let here = fs::metadata("/proc/thread-self/ns/net").unwrap();
            let there = file.metadata().unwrap();
            assert_eq!(
                (here.dev(), here.ino()),
                (there.dev(), there.ino()),
                "this thread is not in {path:?}"
            );
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
static REAP: Once = Once::new();

/// A named network namespace (`ip netns add`), unique per test and per process, with its own temp
/// dir (holding the per-namespace `XTABLES_LOCKFILE` and the logs of background processes).
///
/// On drop: kills the processes it spawned and every process still in the namespace
/// (`ip netns pids`), then `ip netns del`, then removes the temp dir.
pub struct Netns {
    name: String,
    dir: PathBuf,
    children: Mutex<Vec<Child>>,
}

impl Netns {
    /// Creates `kprs-<pid>-<n>-<tag>`. Panics if `ip netns add` fails.
    pub fn new(tag: &str) -> Netns {
        assert!(
            !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "namespace tag must be [A-Za-z0-9-]+: {tag:?}"
        );
        REAP.call_once(reap_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .stdin(Stdio::null())
            .output()
            .expect("run `ip netns add` (is iproute2 installed?)");
        if !out.status.success() {
            let _ = fs::remove_dir_all(&dir);
            panic!(
                "`ip netns add {name}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // From here on the guard exists, so a later panic cleans up.
        let ns = Netns {
            name,
            dir,
            children: Mutex::new(Vec::new()),
        };
        ns.exec_ok(["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Its name (`kprs-<pid>-<n>-<tag>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This namespace's private temp dir (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `XTABLES_LOCKFILE` every command run through this guard gets.
    pub fn lockfile(&self) -> PathBuf {
        self.dir.join("xtables.lock")
    }

    /// `/run/netns/<name>`: open it and `setns` to enter the namespace from a thread.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A `Command` running `args` inside the namespace (`ip netns exec <name> args…`), with this
    /// namespace's `XTABLES_LOCKFILE`. Arguments are passed as a vector, never through a shell.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(args)
            .env("XTABLES_LOCKFILE", self.lockfile())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `args` inside the namespace and returns its output (whatever the exit status).
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} in {}: {e}", self.name))
    }

    /// Runs `args` inside the namespace with `input` on stdin.
    pub fn exec_input<I, S>(&self, args: I, input: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} in {}: {e}", self.name));
        let mut stdin = child.stdin.take().expect("piped stdin");
        // Write from a thread so a child that fills its stdout pipe cannot deadlock us.
        let input = input.to_vec();
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait {cmd:?} in {}: {e}", self.name));
        let _ = writer.join();
        out
    }

    /// Runs `args` inside the namespace, panics with stderr unless it exits 0, returns stdout.
    #[track_caller]
    pub fn exec_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.exec(&args);
        if !out.status.success() {
            panic!(
                "in netns {}: {:?} failed ({}): {}",
                self.name,
                args,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `args` in the background inside the namespace; it is killed when the guard drops.
    /// Its stdout/stderr go to `<dir>/<log>.log`. Returns the pid.
    pub fn spawn<I, S>(&self, log: &str, args: I) -> u32
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let path = self.dir.join(format!("{log}.log"));
        let file =
            fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let err = file.try_clone().expect("dup log file");
        let mut cmd = self.command(args);
        cmd.stdout(file).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} in {}: {e}", self.name));
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// The log of a process started with [`Netns::spawn`].
    pub fn log(&self, log: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{log}.log"))).unwrap_or_default()
    }

    /// Sets a sysctl inside the namespace (`sysctl -qw key=value`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok(["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Gives link `dev` the address `cidr` (`ip/prefix`) and sets it up.
    pub fn addr_up(&self, dev: &str, cidr: &str) {
        self.exec_ok(["ip", "addr", "add", cidr, "dev", dev]);
        self.exec_ok(["ip", "link", "set", dev, "up"]);
    }

    /// A bridge `dev` with the address `cidr`, up.
    pub fn add_bridge(&self, dev: &str, cidr: &str) {
        self.exec_ok(["ip", "link", "add", dev, "type", "bridge"]);
        self.addr_up(dev, cidr);
    }

    /// A veth pair: `host_if` in this namespace, `eth0` in `peer` (both ends created straight
    /// into their namespaces; `ip` runs in this one). Both ends are left down.
    pub fn add_veth(&self, host_if: &str, peer: &Netns) {
        self.exec_ok([
            "ip",
            "link",
            "add",
            host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ]);
    }

    /// This namespace's end of an [`Netns::add_veth`] pair: `eth0` gets `cidr` and goes up, and
    /// the default route goes via `gateway`.
    pub fn eth0_up(&self, cidr: &str, gateway: &str) {
        self.addr_up("eth0", cidr);
        self.exec_ok(["ip", "route", "add", "default", "via", gateway]);
    }

    /// Pids of every process in the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        ns_pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        for c in &mut children {
            let _ = c.kill();
        }
        kill_all_in(&self.name);
        for c in &mut children {
            let _ = c.wait();
        }
        delete_ns(&self.name);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

fn ns_pids(name: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", name])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// SIGKILLs every process in the namespace, a few rounds (forked children may appear meanwhile).
fn kill_all_in(name: &str) {
    for _ in 0..20 {
        let pids = ns_pids(name);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            if pid > 1 && pid as u32 != std::process::id() {
                // SAFETY: plain kill(2) on a pid that `ip netns pids` reported for our namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn delete_ns(name: &str) {
    for _ in 0..10 {
        let ok = Command::new("ip")
            .args(["netns", "del", name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok || !Path::new("/run/netns").join(name).exists() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("warning: could not delete network namespace {name}");
}

/// Deletes namespaces left behind by an earlier test process that was killed before its guards
/// ran (`kprs-<pid>-…` whose pid no longer exists). Only touches names in our own format.
fn reap_stale() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(n), Some(_tag)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u32>()) else {
            continue;
        };
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        eprintln!("testkit::netns: removing stale namespace {name} (process {pid} is gone)");
        kill_all_in(&name);
        delete_ns(&name);
        let _ = fs::remove_dir_all(std::env::temp_dir().join(&name));
    }
}
