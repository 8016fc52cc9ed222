//! iptables back ends, restore into and save from a test namespace.

use rulegen::IpFamily;

use super::netns::Netns;

/// The iptables back end: both exist on the test machine, a namespace must only ever get one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// `iptables-nft` (nf_tables).
    Nft,
}

impl Backend {
    /// Both back ends.
    pub const ALL: [Backend; 2] = [Backend::Legacy, Backend::Nft];

    /// `legacy` or `nft`, as the tools' names spell it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }

    /// `iptables-legacy-restore`, `ip6tables-nft-restore`, …
    pub fn restore_bin(self, family: IpFamily) -> String {
        format!("{}-{}-restore", tool(family), self.name())
    }

    /// `iptables-legacy-save`, `ip6tables-nft-save`, …
    pub fn save_bin(self, family: IpFamily) -> String {
        format!("{}-{}-save", tool(family), self.name())
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The family's tool name stem (`iptables` or `ip6tables`).
fn tool(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "iptables",
        IpFamily::V6 => "ip6tables",
    }
}

/// `iptables-<b>-restore -w` of `text` (IPv4) into `ns`. Err carries the tool's stderr.
pub fn restore(ns: &Netns, backend: Backend, text: &str) -> Result<(), String> {
    restore_with(ns, backend, IpFamily::V4, &[], text)
}

/// `<family>-<b>-restore -w <extra…>` of `text` into `ns` (e.g. `extra = &["--noflush"]`).
pub fn restore_with(
    ns: &Netns,
    backend: Backend,
    family: IpFamily,
    extra: &[&str],
    text: &str,
) -> Result<(), String> {
    let bin = backend.restore_bin(family);
    let mut args = vec![bin.as_str(), "-w"];
    args.extend_from_slice(extra);
    let out = ns.exec_input(&args, text.as_bytes());
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} in {} failed ({}): {}{}",
            args.join(" "),
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// `iptables-<b>-save -t <table>` for each table, in the given order, concatenated, with every
/// `#` line (banners, back-end warnings) dropped. Save per table so that legacy and nft print the
/// tables in the same order (the order of the payload, see [`payload_tables`]). Panics on failure.
pub fn save_tables(ns: &Netns, backend: Backend, tables: &[&str]) -> String {
    save_tables_with(ns, backend, IpFamily::V4, tables)
}

/// [`save_tables`] for either family (`ip6tables-<b>-save` for [`IpFamily::V6`]).
pub fn save_tables_with(ns: &Netns, backend: Backend, family: IpFamily, tables: &[&str]) -> String {
    let bin = backend.save_bin(family);
    let mut all = String::new();
    for table in tables {
        let text = ns.exec_ok([bin.as_str(), "-t", table]);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            all.push_str(line);
            all.push('\n');
        }
    }
    all
}

/// The tables of an iptables-restore payload (`*filter`, `*nat`, …), in order of appearance.
pub fn payload_tables(text: &str) -> Vec<&str> {
    let mut tables = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            let t = t.trim();
            if !tables.contains(&t) {
                tables.push(t);
            }
        }
    }
    tables
}
