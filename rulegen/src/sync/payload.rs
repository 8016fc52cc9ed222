//! [`Payload`]: an `iptables-restore` input described as pieces borrowed from a [`Ruleset`],
//! written out in bounded chunks.
//!
//! A full sync of a large node sends tens of megabytes; building that text next to the
//! rendered ruleset it copies would double the agent's peak memory, so a payload only points
//! into the ruleset and is formatted a chunk at a time as the pipe takes it.
//!
//! [`Ruleset`]: crate::Ruleset

use std::fmt;

use crate::render::iptables::chains::ChainName;

/// One piece of a restore payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// `*TABLE`: starts a table's transaction.
    Table(&'static str),
    /// `:NAME - [0:0]`: creates the chain, or flushes it if it exists.
    Declare(&'a ChainName),
    /// Rule lines, verbatim (each `-A CHAIN …\n`).
    Rules(&'a str),
    /// `-F NAME`: fails the table's transaction if the chain does not exist (the canary check).
    Flush(&'a ChainName),
    /// `-C …` for one saved rule (given without its `-A `): fails the table's transaction if the
    /// rule is missing (a flushed built-in chain).
    Check(&'a str),
    /// `-X NAME`: deletes the chain (declared, hence empty, earlier in the table).
    Delete(&'a ChainName),
    /// `COMMIT`: ends a table's transaction.
    Commit,
}

impl Piece<'_> {
    /// Appends the piece's text to `out`.
    pub fn write_to<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        match self {
            Piece::Table(t) => {
                out.write_char('*')?;
                out.write_str(t)?;
                out.write_char('\n')
            }
            Piece::Declare(n) => {
                out.write_char(':')?;
                out.write_str(n.as_str())?;
                out.write_str(" - [0:0]\n")
            }
            Piece::Rules(r) => out.write_str(r),
            Piece::Flush(n) => {
                out.write_str("-F ")?;
                out.write_str(n.as_str())?;
                out.write_char('\n')
            }
            Piece::Check(rule) => {
                out.write_str("-C ")?;
                out.write_str(rule)?;
                out.write_char('\n')
            }
            Piece::Delete(n) => {
                out.write_str("-X ")?;
                out.write_str(n.as_str())?;
                out.write_char('\n')
            }
            Piece::Commit => out.write_str("COMMIT\n"),
        }
    }

    /// The piece's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Piece::Table(t) => t.len() + 2,
            Piece::Declare(n) => n.as_str().len() + 10,
            Piece::Rules(r) => r.len(),
            Piece::Flush(n) | Piece::Delete(n) => n.as_str().len() + 4,
            Piece::Check(rule) => rule.len() + 4,
            Piece::Commit => 7,
        }
    }

    /// Whether the piece writes nothing (empty rule text).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A whole restore payload, as pieces in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The pieces, in the order they are sent.
    pub pieces: Vec<Piece<'a>>,
}

impl<'a> Payload<'a> {
    /// Appends a piece.
    pub fn push(&mut self, piece: Piece<'a>) {
        self.pieces.push(piece);
    }

    /// The payload's size in bytes.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Piece::len).sum()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.iter().all(Piece::is_empty)
    }

    /// Writes the whole payload to `out`.
    pub fn write_to<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        self.pieces.iter().try_for_each(|p| p.write_to(out))
    }

    /// The whole payload as one string (for tests, logs and error messages; the agent streams).
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.len());
        self.write_to(&mut s)
            .expect("writing to a String cannot fail");
        s
    }

    /// Appends pieces from index `from` to `buf` until it holds at least `chunk` bytes or the
    /// payload ends; returns the index to continue from (`pieces.len()` at the end).
    pub fn fill(&self, from: usize, buf: &mut String, chunk: usize) -> usize {
        let mut i = from;
        while i < self.pieces.len() && buf.len() < chunk {
            self.pieces[i]
                .write_to(buf)
                .expect("writing to a String cannot fail");
            i += 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_print_restore_lines_and_know_their_length() {
        let a = ChainName::new("KUBE-SVC-A");
        let mut p = Payload::default();
        p.push(Piece::Table("nat"));
        p.push(Piece::Declare(&a));
        p.push(Piece::Flush(&a));
        p.push(Piece::Check("PREROUTING -j KUBE-SERVICES"));
        p.push(Piece::Rules("-A KUBE-SVC-A -j ACCEPT\n"));
        p.push(Piece::Rules(""));
        p.push(Piece::Delete(&a));
        p.push(Piece::Commit);
        let text = p.to_text();
        assert_eq!(
            text,
            "*nat\n:KUBE-SVC-A - [0:0]\n-F KUBE-SVC-A\n-C PREROUTING -j KUBE-SERVICES\n\
             -A KUBE-SVC-A -j ACCEPT\n-X KUBE-SVC-A\nCOMMIT\n"
        );
        assert_eq!(p.len(), text.len());
        for piece in &p.pieces {
            assert_eq!(piece.len(), {
                let mut s = String::new();
                piece.write_to(&mut s).unwrap();
                s.len()
            });
        }
    }

    #[test]
    fn chunks_concatenate_to_the_whole_payload() {
        let a = ChainName::new("A");
        let mut p = Payload::default();
        p.push(Piece::Table("filter"));
        for _ in 0..100 {
            p.push(Piece::Declare(&a));
        }
        p.push(Piece::Commit);
        let mut joined = String::new();
        let mut at = 0;
        let mut chunks = 0;
        while at < p.pieces.len() {
            let mut buf = String::new();
            at = p.fill(at, &mut buf, 64);
            assert!(
                buf.len() < 64 + 16,
                "a chunk overshoots by one piece at most"
            );
            joined.push_str(&buf);
            chunks += 1;
        }
        assert!(chunks > 10);
        assert_eq!(joined, p.to_text());
    }
}
