//! `iptables-save -t TABLE` and `iptables-restore --noflush`, with a failed restore traced back
//! to the payload line (and its table, chain and comment) that the tool rejected.

use std::fmt;
use std::process::ExitStatus;

use thiserror::Error;

use rulegen::Payload;

use crate::command::{CommandError, FEED_CHUNK, Feed, Finished};
use crate::iptables::{Iptables, LOCK_WAIT_SECONDS};

/// Lines of payload shown before and after the failing one in [`FailedLine::context`].
const CONTEXT_LINES: usize = 3;

/// Why a restore failed.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// The tool could not be run to completion (not installed, timed out, I/O).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The tool ran and rejected the payload.
    #[error(transparent)]
    Rejected(#[from] Box<Rejected>),
}

/// A payload the restore tool refused: what it said, and which line it blamed.
#[derive(Debug)]
pub struct Rejected {
    /// The command line that ran.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// The payload line the failure is traced to, when the tool named one.
    pub line: Option<FailedLine>,
    /// Tables whose `COMMIT` came before the failing line: the restore tools commit table by
    /// table, so these now hold the new rules; the failing table and every later one are
    /// untouched. Empty when the failing line is unknown.
    pub committed: Vec<String>,
}

/// One line of a restore payload, with where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedLine {
    /// Its 1-based line number in the payload.
    pub number: usize,
    /// Its text.
    pub text: String,
    /// The table (`*nat`) it belongs to.
    pub table: Option<String>,
    /// The chain it declares, fills or deletes (`None` for `*table` and `COMMIT` lines).
    pub chain: Option<String>,
    /// Its `-m comment --comment` text (rulegen writes `namespace/name:port …` there).
    pub comment: Option<String>,
    /// The surrounding payload lines, numbered, the failing one marked with `>`.
    pub context: String,
}

impl std::error::Error for Rejected {}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)?;
        if let Some(l) = &self.line {
            write!(f, " at payload line {}", l.number)?;
            let mut place = Vec::new();
            if let Some(t) = &l.table {
                place.push(format!("table {t}"));
            }
            if let Some(c) = &l.chain {
                place.push(format!("chain {c}"));
            }
            if let Some(c) = &l.comment {
                place.push(format!("comment {c:?}"));
            }
            if !place.is_empty() {
                write!(f, " ({})", place.join(", "))?;
            }
            write!(f, " `{}`", l.text)?;
        }
        write!(f, ": {}", summary(&self.stderr))?;
        if !self.committed.is_empty() {
            write!(
                f,
                " (already committed: {}; the rest is unchanged)",
                self.committed.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Iptables {
    /// `iptables-save -t TABLE`: the table as the kernel holds it (with `#` comment lines).
    pub async fn save(&self, table: &str) -> Result<String, CommandError> {
        self.launcher
            .run(
                &self.backend.save(self.family),
                &["-t", table],
                None,
                self.timeout,
            )
            .await
    }

    /// `iptables-restore -w 5 --noflush` of `payload`: chains the payload declares are flushed
    /// and refilled, every other chain is left alone; each table is one atomic transaction.
    pub async fn restore(&self, payload: &str) -> Result<(), RestoreError> {
        let program = self.backend.restore(self.family);
        let args = ["-w", LOCK_WAIT_SECONDS, "--noflush"];
        let done = self
            .launcher
            .output(&program, &args, Some(payload.as_bytes()), self.timeout)
            .await?;
        self.restore_result(payload, done)
    }

    /// Like [`Iptables::restore`], but formats the payload a chunk at a time as the tool reads
    /// it, so a full sync never holds the whole text; it is only written out in full to explain
    /// a failure.
    pub async fn restore_payload(&self, payload: &Payload<'_>) -> Result<(), RestoreError> {
        let program = self.backend.restore(self.family);
        let args = ["-w", LOCK_WAIT_SECONDS, "--noflush"];
        let mut at = 0;
        let mut next = |buf: &mut String| {
            at = payload.fill(at, buf, FEED_CHUNK);
            at < payload.pieces.len()
        };
        let done = self
            .launcher
            .exchange(&program, &args, Feed::Chunks(&mut next), None, self.timeout)
            .await?;
        if done.status.success() {
            return Ok(());
        }
        self.restore_result(&payload.to_text(), done)
    }

    fn restore_result(&self, payload: &str, done: Finished) -> Result<(), RestoreError> {
        if done.status.success() {
            return Ok(());
        }
        let program = self.backend.restore(self.family);
        let args = ["-w", LOCK_WAIT_SECONDS, "--noflush"];
        let line = failed_line_number(&done.stderr).and_then(|n| locate(payload, n, &done.stderr));
        let committed = line
            .as_ref()
            .map(|l| committed_before(payload, l.number))
            .unwrap_or_default();
        Err(RestoreError::Rejected(Box::new(Rejected {
            command: self.launcher.display(&program, &args),
            status: done.status,
            stderr: done.stderr,
            line,
            committed,
        })))
    }
}

/// The payload line number an `iptables-restore` error names. Seen forms (1.8.9):
/// `Error occurred at line: 8` (parse errors, both back ends), `iptables-restore: line 5 failed`
/// (legacy commit), `iptables-nft-restore: line 4 failed: …` and
/// `line 4: RULE_APPEND failed (Invalid argument): rule in chain X` (nft kernel errors).
pub fn failed_line_number(stderr: &str) -> Option<usize> {
    let bytes = stderr.as_bytes();
    let mut from = 0;
    while let Some(i) = stderr[from..].find("line") {
        let at = from + i;
        from = at + 4;
        if at > 0 && bytes[at - 1].is_ascii_alphanumeric() {
            continue;
        }
        let rest = stderr[at + 4..].trim_start_matches([':', ' ']);
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0
            && let Ok(n) = rest[..digits].parse::<usize>()
            && n > 0
        {
            return Some(n);
        }
    }
    None
}

/// Line `number` of `payload` with its table, chain, comment and context.
///
/// When the tool blamed a `COMMIT` line for a jump to a chain that does not exist (nft checks
/// jumps when it commits: "Chain 'X' does not exist"), the rule of that table that jumps to the
/// missing chain is blamed instead, so the caller can tell which Service it belongs to.
pub fn locate(payload: &str, number: usize, stderr: &str) -> Option<FailedLine> {
    let mut table = None;
    let mut table_start = 1;
    let mut target = None;
    for (i, line) in payload.lines().enumerate() {
        let n = i + 1;
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim().to_string());
            table_start = n;
        }
        if n == number {
            target = Some(line);
            break;
        }
    }
    let text = target?;
    let mut number = number;
    let mut text = text.to_string();
    if (text == "COMMIT" || text.starts_with('*'))
        && let Some(missing) = missing_chain(stderr)
        && let Some((n, l)) = payload
            .lines()
            .enumerate()
            .skip(table_start)
            .take(number.saturating_sub(table_start))
            .find(|(_, l)| jumps_to(l, missing))
    {
        number = n + 1;
        text = l.to_string();
    }
    Some(FailedLine {
        number,
        chain: chain_of(&text),
        comment: comment_of(&text),
        context: context(payload, number),
        table,
        text,
    })
}

/// The tables whose `COMMIT` comes before line `number`.
fn committed_before(payload: &str, number: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut table = None;
    for line in payload.lines().take(number.saturating_sub(1)) {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim().to_string());
        } else if line == "COMMIT"
            && let Some(t) = table.take()
        {
            out.push(t);
        }
    }
    out
}

/// The chain a payload line declares (`:X - [0:0]`), fills (`-A X …`) or deletes (`-X X`).
fn chain_of(line: &str) -> Option<String> {
    if let Some(decl) = line.strip_prefix(':') {
        return decl.split_whitespace().next().map(str::to_string);
    }
    let mut words = line.split_whitespace();
    match words.next()? {
        "-A" | "-I" | "-D" | "-R" | "-N" | "-X" | "-F" | "-Z" | "-P" => {
            words.next().map(str::to_string)
        }
        _ => None,
    }
}

/// The `--comment` argument of a rule line, unquoted.
fn comment_of(line: &str) -> Option<String> {
    if !line.contains("--comment") {
        return None;
    }
    let args = rulegen::sync::restore::split_args(line);
    let i = args.iter().position(|a| a == "--comment")?;
    args.get(i + 1).cloned()
}

/// `X` in nft's "Chain 'X' does not exist".
fn missing_chain(stderr: &str) -> Option<&str> {
    let rest = &stderr[stderr.find("Chain '")? + 7..];
    let name = &rest[..rest.find('\'')?];
    rest[name.len()..]
        .starts_with("' does not exist")
        .then_some(name)
}

fn jumps_to(line: &str, chain: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.first() == Some(&"-A")
        && words
            .windows(2)
            .any(|w| matches!(w[0], "-j" | "-g") && w[1] == chain)
}

fn context(payload: &str, number: usize) -> String {
    let first = number.saturating_sub(CONTEXT_LINES).max(1);
    let mut out = String::new();
    for (i, line) in payload
        .lines()
        .enumerate()
        .skip(first - 1)
        .take(number + CONTEXT_LINES + 1 - first)
    {
        let n = i + 1;
        let mark = if n == number { '>' } else { ' ' };
        out.push_str(&format!("{mark}{n:>7}: {line}\n"));
    }
    out
}

/// stderr without the usage hint and the line-number notice, on one line.
fn summary(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Try `") && !l.starts_with("Error occurred at line")
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        if !out.is_empty() {
            // "iptables-nft-restore v1.8.9 (nf_tables): " + the message on the next line.
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(l);
    }
    if out.is_empty() {
        out.push_str("(no message)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = "*filter\n:KUBE-A - [0:0]\n-A KUBE-A -j ACCEPT\nCOMMIT\n*nat\n:KUBE-SVC-X - [0:0]\n:KUBE-SEP-Y - [0:0]\n-A KUBE-SVC-X -m comment --comment \"ns1/svc1:p80 -> 10.0.0.1:80\" -j KUBE-SEP-Y\n-A KUBE-SEP-Y -m comment --comment ns1/svc1:p80 -j KUBE-SEP-Z\n-X KUBE-SVC-OLD\nCOMMIT\n";

    #[test]
    fn every_seen_error_form_gives_its_line() {
        let cases = [
            (
                "iptables-restore v1.8.9 (legacy): invalid port/service `99999' specified\nError occurred at line: 3\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.\n",
                3,
            ),
            ("iptables-restore: line 5 failed\n", 5),
            (
                "iptables-nft-restore: line 4 failed: No chain/target/match by that name.\n",
                4,
            ),
            (
                "iptables-nft-restore v1.8.9 (nf_tables): \nline 4: RULE_APPEND failed (Invalid argument): rule in chain KUBE-B\n",
                4,
            ),
            (
                "iptables-restore v1.8.9 (legacy): Couldn't load target `X':No such file or directory\n\nError occurred at line: 1234\n",
                1234,
            ),
        ];
        for (stderr, n) in cases {
            assert_eq!(failed_line_number(stderr), Some(n), "{stderr}");
        }
        assert_eq!(
            failed_line_number("Another app is currently holding the xtables lock; online 3"),
            None
        );
        assert_eq!(failed_line_number("iptables-restore: line failed"), None);
    }

    #[test]
    fn a_rule_line_names_table_chain_and_comment() {
        let l = locate(PAYLOAD, 8, "").unwrap();
        assert_eq!(l.table.as_deref(), Some("nat"));
        assert_eq!(l.chain.as_deref(), Some("KUBE-SVC-X"));
        assert_eq!(l.comment.as_deref(), Some("ns1/svc1:p80 -> 10.0.0.1:80"));
        assert!(l.text.starts_with("-A KUBE-SVC-X "));
        assert!(
            l.context.contains(">      8: -A KUBE-SVC-X"),
            "{}",
            l.context
        );
        assert_eq!(l.context.lines().count(), 7);
        assert_eq!(committed_before(PAYLOAD, 8), vec!["filter"]);
        assert!(committed_before(PAYLOAD, 3).is_empty());

        let x = locate(PAYLOAD, 10, "").unwrap();
        assert_eq!(x.chain.as_deref(), Some("KUBE-SVC-OLD"));
        assert_eq!(x.comment, None);
        let decl = locate(PAYLOAD, 2, "").unwrap();
        assert_eq!(
            (decl.table.as_deref(), decl.chain.as_deref()),
            (Some("filter"), Some("KUBE-A"))
        );
        assert!(locate(PAYLOAD, 99, "").is_none());
    }

    #[test]
    fn a_commit_blamed_for_a_missing_chain_points_at_the_jump() {
        let stderr = "iptables-nft-restore v1.8.9 (nf_tables): Chain 'KUBE-SEP-Z' does not exist\nError occurred at line: 11\n";
        let l = locate(PAYLOAD, failed_line_number(stderr).unwrap(), stderr).unwrap();
        assert_eq!(l.number, 9);
        assert_eq!(l.chain.as_deref(), Some("KUBE-SEP-Y"));
        assert_eq!(l.comment.as_deref(), Some("ns1/svc1:p80"));
        // Any other COMMIT failure stays on the COMMIT line.
        let l = locate(PAYLOAD, 11, "iptables-restore: line 11 failed").unwrap();
        assert_eq!((l.text.as_str(), l.chain.as_deref()), ("COMMIT", None));
        assert_eq!(l.table.as_deref(), Some("nat"));
    }

    #[test]
    fn summary_drops_the_usage_hint() {
        assert_eq!(
            summary(
                "iptables-nft-restore v1.8.9 (nf_tables): \nline 4: RULE_APPEND failed (Invalid argument): rule in chain B\n"
            ),
            "iptables-nft-restore v1.8.9 (nf_tables): line 4: RULE_APPEND failed (Invalid argument): rule in chain B"
        );
        assert_eq!(summary("a\nb\n"), "a; b");
        assert_eq!(summary("\n"), "(no message)");
        assert_eq!(
            summary(
                "iptables-restore v1.8.9 (legacy): bad\nError occurred at line: 3\nTry `iptables-restore -h' or more\n"
            ),
            "iptables-restore v1.8.9 (legacy): bad"
        );
    }
}
