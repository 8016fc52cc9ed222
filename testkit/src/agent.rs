//! Running the real agent inside a lab node namespace, waiting for it and reading what it
//! applied there, and the compact `--objects` files the agent tests write for it (namespace
//! `lab`, this node `node-a`).

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::Netns;

/// The flags every lab agent gets after where its objects come from: this node is `node-a`,
/// pods are in 10.244.0.0/16, and it syncs at most every 100 ms.
pub const LAB_FLAGS: [&str; 6] = [
    "--hostname-override",
    "node-a",
    "--cluster-cidr",
    "10.244.0.0/16",
    "--iptables-min-sync-period",
    "100ms",
];

/// The agent running inside a namespace (`ip netns exec` execs it in place, so the child's pid
/// is the agent's). Killed on drop, so a failing test leaves no agent behind.
pub struct AgentProcess {
    /// The agent process.
    pub child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts `kube-proxy-rs args…` in `node` with debug logs (and `envs`) going to `log`.
    pub fn start(node: &Netns, args: &[&str], envs: &[(&str, String)], log: &Path) -> AgentProcess {
        AgentProcess::start_limited(node, args, envs, log, None)
    }

    /// [`AgentProcess::start`], with the agent's open-file limit (`RLIMIT_NOFILE`) set to
    /// `(soft, hard)` when given, as systemd and some container runtimes start it (a low soft
    /// limit under a higher hard one).
    pub fn start_limited(
        node: &Netns,
        args: &[&str],
        envs: &[(&str, String)],
        log: &Path,
        nofile: Option<(u64, u64)>,
    ) -> AgentProcess {
        let file = fs::File::create(log).unwrap();
        let mut cmd = node.command(
            std::iter::once(crate::cli::binary().as_os_str())
                .chain(args.iter().map(std::ffi::OsStr::new)),
        );
        cmd.env("RUST_LOG", "debug");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe and touches nothing but the child (`ip
            // netns exec` keeps the limit across its exec of the agent).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.stdout(Stdio::null()).stderr(file);
        AgentProcess {
            child: cmd.spawn().expect("start the agent"),
            log: log.to_path_buf(),
        }
    }

    /// Starts the agent in the lab node `node`, fast-paced for tests: `source` (`("--objects",
    /// file)` or `("--kubeconfig", file)`), then [`LAB_FLAGS`], then `extra`; see
    /// [`AgentProcess::start`] for `envs` and `log`.
    pub fn start_in_lab(
        node: &Netns,
        source: (&str, &Path),
        extra: &[&str],
        envs: &[(&str, String)],
        log: &Path,
    ) -> AgentProcess {
        let (flag, file) = source;
        let mut args = vec![flag, file.to_str().unwrap()];
        args.extend(LAB_FLAGS);
        args.extend(extra);
        AgentProcess::start(node, &args, envs, log)
    }

    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nat table of namespace `node` as the nft back end holds it (the agent picks nft in a
/// fresh namespace: no kubelet chains and no rules make a tie). Takes the name, not the guard,
/// so threads can call it.
pub fn nft_nat(node: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", node, "iptables-nft-save", "-t", "nat"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Service chains a nat table holds — counted only once the hooks are in place too (the agent
/// restores first and then ensures the jumps from the built-in chains).
pub fn svc_chains(nat: &str) -> usize {
    if !nat.contains(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    ) {
        return 0;
    }
    nat.lines().filter(|l| l.starts_with(":KUBE-SVC-")).count()
}

/// Calls `f` every 20 ms until it returns `Some`, and returns that; once `limit` has passed,
/// panics with `what` and the agent's log.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    agent: &AgentProcess,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= limit {
            panic!("{what}: not within {limit:?}\nagent log:\n{}", agent.log());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_for`] `cond` to hold; returns how long that took.
pub fn wait_until(
    what: &str,
    limit: Duration,
    agent: &AgentProcess,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    wait_for(what, limit, agent, || cond().then_some(()));
    start.elapsed()
}

/// Runs `f` on a fresh thread that has entered `ns`'s network namespace, with its own
/// single-threaded runtime: every socket it opens (API server, API client) lives in `ns`. A
/// panic in `f` fails the test.
pub fn in_netns<F, Fut>(ns: &Netns, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    super::in_ns(ns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    });
}

/// The v1 Node `node-a`, InternalIP 192.168.50.1 (the lab node's address towards its first
/// client).
pub const NODE: &str = "apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.50.1}]}
";

/// A Service port: its name, number and protocol, and the endpoints' port.
#[derive(Clone, Copy, Debug)]
pub struct Port {
    /// The port's name.
    pub name: &'static str,
    /// The Service port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: &'static str,
    /// The endpoints' port.
    pub target: u16,
}

/// `http` 80 → 8080/TCP (the lab pods' servers).
pub const HTTP: Port = Port {
    name: "http",
    port: 80,
    protocol: "TCP",
    target: 8080,
};

/// `---` and a ClusterIP Service `name` in namespace `lab` at `ip`, with one port.
pub fn service_yaml(name: &str, ip: &str, port: Port) -> String {
    let Port {
        name: port_name,
        port,
        protocol,
        target,
    } = port;
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: lab}}\nspec:\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ports: [{{name: {port_name}, port: {port}, protocol: {protocol}, targetPort: {target}}}]\n"
    )
}

/// `---` and the EndpointSlice `<service>-1` of Service `service` in namespace `lab`: `port`'s
/// endpoint port, ready `endpoints` (address, node name), and, when given, the
/// `endpoints.kubernetes.io/last-change-trigger-time` annotation.
pub fn slice_yaml(
    service: &str,
    port: Port,
    endpoints: &[(&str, &str)],
    trigger_time: Option<&str>,
) -> String {
    let Port {
        name: port_name,
        protocol,
        target,
        ..
    } = port;
    let annotations = trigger_time
        .map(|t| {
            format!(", annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{t}\"}}")
        })
        .unwrap_or_default();
    let mut s = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: lab, labels: {{kubernetes.io/service-name: {service}}}{annotations}}}\naddressType: IPv4\nports: [{{name: {port_name}, port: {target}, protocol: {protocol}}}]\nendpoints:\n"
    );
    for (ip, node) in endpoints {
        s.push_str(&format!(
            "- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}\n"
        ));
    }
    s
}

/// [`service_yaml`] with [`HTTP`].
pub fn service(name: &str, ip: &str) -> String {
    service_yaml(name, ip, HTTP)
}

/// [`slice_yaml`] with [`HTTP`], the endpoints `ips` all on `node-a`, no trigger time.
pub fn slice(service: &str, ips: &[&str]) -> String {
    let endpoints: Vec<(&str, &str)> = ips.iter().map(|ip| (*ip, "node-a")).collect();
    slice_yaml(service, HTTP, &endpoints, None)
}

/// Writes `text` so the agent never sees a half-written file (write, then rename).
pub fn write_objects(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Fault injection: writes `<dir>/bin/iptables-nft-restore`, which fails (`injected failure`
/// on stderr) while `marker` exists — only once when `once`: it removes the marker as it fails
/// — and otherwise runs the real tool. Returns the agent's `PATH` with that directory first.
///
/// Only the agent gets this PATH, and the agent runs inside the lab's node namespace (`ip netns
/// exec`), so the wrapper never touches the root namespace; the `command -v` here only looks
/// the real tool's path up.
pub fn failing_restore(dir: &Path, marker: &Path, once: bool) -> (&'static str, String) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v iptables-nft-restore"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let marker = marker.display();
    let remove = if once {
        format!("rm -f '{marker}'; ")
    } else {
        String::new()
    };
    let wrapper = bin.join("iptables-nft-restore");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e '{marker}' ]; then {remove}echo 'iptables-nft-restore: injected failure' >&2; exit 1; fi\nexec {} \"$@\"\n",
            real.trim()
        ),
    )
    .unwrap();
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    (
        "PATH",
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    )
}

/// The agent tests' lab: the first `pods` of pod `pa` (10.244.1.11) and pod `pb` (10.244.1.12),
/// and client `c`.
pub fn lab(tag: &str, pods: usize) -> crate::Lab {
    [("pa", "10.244.1.11"), ("pb", "10.244.1.12")]
        .into_iter()
        .take(pods)
        .fold(crate::Lab::builder(tag), |b, (name, ip)| b.pod(name, ip))
        .client("c")
        .build()
}
