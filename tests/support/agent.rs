//! Running the real agent inside a lab node namespace, and reading what it applied there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::Netns;

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
        let file = fs::File::create(log).unwrap();
        let mut cmd = node.command(
            std::iter::once(env!("CARGO_BIN_EXE_kube-proxy-rs")).chain(args.iter().copied()),
        );
        cmd.env("RUST_LOG", "debug");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(file);
        AgentProcess {
            child: cmd.spawn().expect("start the agent"),
            log: log.to_path_buf(),
        }
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
