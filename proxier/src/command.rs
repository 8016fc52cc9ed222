//! Running one tool: built from an argument vector (never a shell string), input piped to its
//! stdin, bounded by a time-out, and killed if the caller gives up on it.

use std::ffi::{OsStr, OsString};
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// How the proxier starts the iptables tools: an optional argument prefix and extra environment.
///
/// The agent uses [`Launcher::host`]: the tools run in its own network namespace. Tests use
/// [`Launcher::netns`] so that every tool runs inside a namespace they created, and set their own
/// `XTABLES_LOCKFILE` with [`Launcher::with_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launcher {
    prefix: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

/// Roughly how many bytes of a streamed payload are formatted before each write to the pipe.
pub const FEED_CHUNK: usize = 256 * 1024;

/// What a tool gets on its stdin.
pub enum Feed<'a> {
    /// Nothing: stdin is `/dev/null`.
    Nothing,
    /// These bytes.
    Bytes(&'a [u8]),
    /// Chunks from a producer: each call appends about [`FEED_CHUNK`] bytes to the (emptied)
    /// buffer and returns whether more follow.
    Chunks(&'a mut (dyn FnMut(&mut String) -> bool + Send)),
}

/// What a finished tool printed, and how it exited.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Why running a tool failed.
#[derive(Debug, Error)]
pub enum CommandError {
    /// The program could not be started (not installed, not executable).
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line, for messages.
        command: String,
        /// What `spawn` reported.
        #[source]
        source: io::Error,
    },
    /// Feeding its stdin or reading its output failed.
    #[error("`{command}`: {source}")]
    Io {
        /// The command line, for messages.
        command: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// It ran longer than allowed and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The command line, for messages.
        command: String,
        /// The time-out that expired.
        timeout: Duration,
    },
    /// It exited unsuccessfully.
    #[error("`{command}` failed ({status}): {}", stderr.trim())]
    Failed {
        /// The command line, for messages.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

impl Launcher {
    /// Runs the tools directly, in the caller's own network namespace.
    pub fn host() -> Self {
        Launcher::default()
    }

    /// Runs every tool inside the named network namespace (`ip netns exec NAME tool …`).
    pub fn netns(name: &str) -> Self {
        Launcher::default().with_prefix(["ip", "netns", "exec", name])
    }

    /// Puts `args` in front of every command line.
    pub fn with_prefix<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.prefix
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for every tool (e.g. `XTABLES_LOCKFILE`).
    pub fn with_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The command line `program args…` would run as, for messages.
    pub fn display(&self, program: &str, args: &[&str]) -> String {
        let mut out = String::new();
        for p in &self.prefix {
            out.push_str(&p.to_string_lossy());
            out.push(' ');
        }
        out.push_str(program);
        for a in args {
            out.push(' ');
            out.push_str(a);
        }
        out
    }

    /// Runs `program args…` with `input` (if any) on its stdin and returns its status and output,
    /// whatever the status. The child is killed if `timeout` expires or the future is dropped.
    pub async fn output(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Finished, CommandError> {
        let feed = match input {
            Some(data) => Feed::Bytes(data),
            None => Feed::Nothing,
        };
        self.exchange(program, args, feed, None, timeout).await
    }

    /// Runs `program args…`, feeding its stdin from `feed` and, when `on_line` is given, handing
    /// it each stdout line (without its newline) as it arrives instead of collecting stdout: a
    /// large node's payload and save are tens of megabytes, never held whole in memory.
    pub async fn exchange(
        &self,
        program: &str,
        args: &[&str],
        feed: Feed<'_>,
        mut on_line: Option<&mut (dyn FnMut(&str) + Send)>,
        timeout: Duration,
    ) -> Result<Finished, CommandError> {
        let command = self.display(program, args);
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        let has_input = !matches!(feed, Feed::Nothing);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if has_input {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if program.ends_with("-save") {
            // The save tools recurse per rule: iptables-nft-save of 10,000 Services died of
            // SIGSEGV with the default 8 MB stack. Give them every byte of stack allowed.
            // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_STACK, &mut lim) == 0 {
                        lim.rlim_cur = lim.rlim_max;
                        libc::setrlimit(libc::RLIMIT_STACK, &lim);
                    }
                    Ok(())
                });
            }
        }
        tracing::trace!(%command, "running");
        let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let feed = async move {
            let Some(mut pipe) = stdin else {
                return Ok(());
            };
            match feed {
                Feed::Nothing => Ok(()),
                Feed::Bytes(data) => pipe.write_all(data).await,
                Feed::Chunks(next) => {
                    let mut buf = String::with_capacity(FEED_CHUNK + 4096);
                    loop {
                        buf.clear();
                        let more = next(&mut buf);
                        pipe.write_all(buf.as_bytes()).await?;
                        if !more {
                            break Ok(());
                        }
                    }
                }
            }
            // Dropping the pipe closes it: the tool sees the end of its input.
        };
        let read_out = async move {
            let mut collected = Vec::new();
            let Some(out) = stdout else {
                return Ok(collected);
            };
            let mut reader = BufReader::new(out);
            match on_line.as_mut() {
                None => {
                    reader.read_to_end(&mut collected).await?;
                }
                Some(cb) => {
                    let mut line = Vec::new();
                    loop {
                        line.clear();
                        if reader.read_until(b'\n', &mut line).await? == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&line);
                        cb(text.trim_end_matches('\n'));
                    }
                }
            }
            Ok::<_, io::Error>(collected)
        };
        let read_err = async move {
            let mut collected = Vec::new();
            if let Some(mut err) = stderr {
                err.read_to_end(&mut collected).await?;
            }
            Ok::<_, io::Error>(collected)
        };
        let work = async move {
            let (fed, out, err) = tokio::join!(feed, read_out, read_err);
            let status = child.wait().await;
            (fed, out, err, status)
        };
        let (fed, out, err, status) = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            // Dropping `work` dropped the child, and `kill_on_drop` killed it.
            Err(_) => return Err(CommandError::Timeout { command, timeout }),
        };
        let io_err = |source| CommandError::Io {
            command: command.clone(),
            source,
        };
        let status = status.map_err(io_err)?;
        let stdout = out.map_err(io_err)?;
        let stderr = err.map_err(io_err)?;
        // A tool that stops reading its input early (it found an error) breaks the pipe; its
        // exit status and stderr say more than the write error, so report those.
        if let Err(source) = fed
            && status.success()
        {
            return Err(CommandError::Io { command, source });
        }
        Ok(Finished {
            status,
            stdout: into_string(stdout),
            stderr: into_string(stderr),
        })
    }

    /// Like [`Launcher::output`], but an unsuccessful exit is an error; returns stdout.
    pub async fn run(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<String, CommandError> {
        let done = self.output(program, args, input, timeout).await?;
        if done.status.success() {
            Ok(done.stdout)
        } else {
            Err(CommandError::Failed {
                command: self.display(program, args),
                status: done.status,
                stderr: done.stderr,
            })
        }
    }
}

fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn pipes_input_and_captures_output() {
        let l = Launcher::host().with_env("KPRS_TEST_VAR", "v");
        let out = l.run("cat", &[], Some(b"hello\n"), T).await.unwrap();
        assert_eq!(out, "hello\n");
        let out = l
            .run("sh", &["-c", "echo $KPRS_TEST_VAR"], None, T)
            .await
            .unwrap();
        assert_eq!(out, "v\n");
    }

    #[tokio::test]
    async fn large_input_does_not_deadlock() {
        // More than any pipe buffer, echoed back: reading and writing must overlap.
        let data = vec![b'x'; 4 << 20];
        let out = Launcher::host()
            .run("cat", &[], Some(&data), T)
            .await
            .unwrap();
        assert_eq!(out.len(), data.len());
    }

    #[tokio::test]
    async fn failure_carries_status_and_stderr() {
        let err = Launcher::host()
            .run("sh", &["-c", "echo bad thing >&2; exit 3"], None, T)
            .await
            .unwrap_err();
        match &err {
            CommandError::Failed { status, stderr, .. } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "bad thing\n");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("bad thing"), "{err}");
    }

    #[tokio::test]
    async fn an_early_exit_reports_the_exit_not_the_broken_pipe() {
        let data = vec![b'x'; 1 << 20];
        let err = Launcher::host()
            .run("sh", &["-c", "echo nope >&2; exit 2"], Some(&data), T)
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Failed { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn time_out_kills_the_child() {
        let pidfile = std::env::temp_dir().join(format!("kprs-cmd-{}.pid", std::process::id()));
        let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
        let start = std::time::Instant::now();
        let err = Launcher::host()
            .run("sh", &["-c", &script], None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        let _ = std::fs::remove_file(&pidfile);
        let stat = format!("/proc/{}/stat", pid.trim());
        // Killed: gone, or a zombie until the runtime reaps it.
        for _ in 0..100 {
            match std::fs::read_to_string(&stat) {
                Err(_) => return,
                Ok(s) if s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("sleep {} still running after the time-out", pid.trim());
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = Launcher::host()
            .run("kprs-no-such-program", &[], None, T)
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err:?}");
    }

    #[test]
    fn prefix_shows_in_the_command_line() {
        let l = Launcher::netns("ns1");
        assert_eq!(
            l.display("iptables-nft-save", &["-t", "nat"]),
            "ip netns exec ns1 iptables-nft-save -t nat"
        );
    }
}
