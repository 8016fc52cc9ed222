//! Writes one rule line in the canonical form `iptables-save` prints: `-s`, `-d`, `-i`, `-p`
//! first, then the match modules in the order given, then the target. Callers append the parts
//! in that order; the functions here only know how each part is spelled.

use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::Protocol;

/// Starts `-A CHAIN`.
pub fn start(out: &mut String, chain: &str) {
    out.push_str("-A ");
    out.push_str(chain);
}

/// Ends the line.
pub fn end(out: &mut String) {
    out.push('\n');
}

/// Whether a `-s`/`-d` match on `net` matches every address: the kernel stores `/0` as "no
/// address match" and `iptables-save` prints nothing for it, so writing `-s 0.0.0.0/0` would make
/// the dry run differ from what the kernel lists. (A negated `/0` matches nothing and is written
/// as given: it is not an absent match.)
pub fn is_match_all(negated: bool, net: &IpNet) -> bool {
    !negated && net.prefix_len() == 0
}

fn neg(out: &mut String, negated: bool) {
    if negated {
        out.push_str(" !");
    }
}

/// ` [!] -s ADDR/len` for a host address.
pub fn src_ip(out: &mut String, negated: bool, ip: &IpAddr) {
    neg(out, negated);
    out.push_str(" -s ");
    host(out, ip);
}

/// ` [!] -s NET/len` for a network (printed with its host bits cleared, as the kernel stores it);
/// nothing for a match-all `/0`, which `iptables-save` leaves out (see [`is_match_all`]).
pub fn src_net(out: &mut String, negated: bool, net: &IpNet) {
    if is_match_all(negated, net) {
        return;
    }
    neg(out, negated);
    out.push_str(" -s ");
    network(out, net);
}

/// ` [!] -d ADDR/len` for a host address.
pub fn dst_ip(out: &mut String, negated: bool, ip: &IpAddr) {
    neg(out, negated);
    out.push_str(" -d ");
    host(out, ip);
}

/// ` [!] -d NET/len`; nothing for a match-all `/0` (see [`is_match_all`]).
pub fn dst_net(out: &mut String, negated: bool, net: &IpNet) {
    if is_match_all(negated, net) {
        return;
    }
    neg(out, negated);
    out.push_str(" -d ");
    network(out, net);
}

/// ` [!] -i IFACE`.
pub fn in_iface(out: &mut String, negated: bool, iface: &str) {
    neg(out, negated);
    out.push_str(" -i ");
    out.push_str(iface);
}

/// ` -p PROTO`.
pub fn proto(out: &mut String, p: Protocol) {
    out.push_str(" -p ");
    out.push_str(p.as_str());
}

/// The most bytes a comment keeps: xt_comment's `XT_MAX_COMMENT_LEN` (256) less the NUL.
/// iptables copies at most this many bytes of `--comment` into the rule and drops the rest
/// without a word, so a longer comment would be listed differently from what was written.
pub const MAX_COMMENT_BYTES: usize = 255;

/// `text` cut to what the kernel keeps of a comment: its first [`MAX_COMMENT_BYTES`] bytes,
/// backed off to a character boundary so the text stays UTF-8 (names from the API are ASCII, where
/// this is exactly iptables' cut).
pub fn clip_comment(text: &str) -> &str {
    if text.len() <= MAX_COMMENT_BYTES {
        return text;
    }
    let mut end = MAX_COMMENT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// ` -m comment --comment TEXT`, cut to [`MAX_COMMENT_BYTES`] and quoted the way xtables quotes
/// saved strings.
pub fn comment(out: &mut String, text: &str) {
    out.push_str(" -m comment --comment");
    save_string(out, clip_comment(text));
}

/// ` -m comment --comment TEXT` where TEXT is the concatenation of `parts` (saves a `format!`),
/// cut like [`comment`].
pub fn comment_parts(out: &mut String, parts: &[&str]) {
    if parts.iter().map(|p| p.len()).sum::<usize>() > MAX_COMMENT_BYTES {
        // Rare (only names longer than the API allows get here): join, then cut.
        comment(out, &parts.concat());
        return;
    }
    out.push_str(" -m comment --comment ");
    let bare = parts.iter().any(|p| !p.is_empty()) && parts.iter().all(|p| is_bare(p));
    if bare {
        for p in parts {
            out.push_str(p);
        }
        return;
    }
    out.push('"');
    for p in parts {
        push_escaped(out, p);
    }
    out.push('"');
}

fn is_bare(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn push_escaped(out: &mut String, value: &str) {
    if !value.bytes().any(|b| matches!(b, b'"' | b'\\' | b'\'')) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// ` -m PROTO --dport N` (the protocol's own match module).
pub fn dport(out: &mut String, p: Protocol, port: u16) {
    out.push_str(" -m ");
    out.push_str(p.as_str());
    out.push_str(" --dport ");
    push_u32(out, port as u32);
}

/// Raw text (a match module or target with its options), written as given.
pub fn raw(out: &mut String, text: &str) {
    out.push_str(text);
}

/// ` -j TARGET`.
pub fn jump(out: &mut String, target: &str) {
    out.push_str(" -j ");
    out.push_str(target);
}

/// A decimal number without going through `fmt` (numbers are a tenth of the rendering work).
pub fn push_u32(out: &mut String, n: u32) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// An IPv4 address in dotted form, without going through `fmt` (the renderer's hot path).
pub fn push_ip(out: &mut String, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            for (i, b) in o.iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(octet(*b));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// The decimal spelling of every byte value, built at compile time (IPv4 octets are the most
/// frequent numbers in a ruleset).
const OCTETS: [[u8; 3]; 256] = {
    let mut t = [[0u8; 3]; 256];
    let mut i = 0;
    while i < 256 {
        let (h, d, u) = ((i / 100) as u8, ((i / 10) % 10) as u8, (i % 10) as u8);
        t[i] = if i >= 100 {
            [b'0' + h, b'0' + d, b'0' + u]
        } else if i >= 10 {
            [b'0' + d, b'0' + u, 0]
        } else {
            [b'0' + u, 0, 0]
        };
        i += 1;
    }
    t
};

fn octet(b: u8) -> &'static str {
    let digits = &OCTETS[b as usize];
    let len = if b >= 100 {
        3
    } else if b >= 10 {
        2
    } else {
        1
    };
    std::str::from_utf8(&digits[..len]).expect("digits are ASCII")
}

fn host(out: &mut String, ip: &IpAddr) {
    push_ip(out, ip);
    out.push_str(match ip {
        IpAddr::V4(_) => "/32",
        IpAddr::V6(_) => "/128",
    });
}

fn network(out: &mut String, net: &IpNet) {
    let t = net.trunc();
    push_ip(out, &t.addr());
    out.push('/');
    push_u32(out, t.prefix_len() as u32);
}

/// `IP:port` or `[IP]:port`, the DNAT destination form.
pub fn endpoint_addr(out: &mut String, ip: &IpAddr, port: u16) {
    match ip {
        IpAddr::V4(_) => push_ip(out, ip),
        IpAddr::V6(_) => {
            out.push('[');
            push_ip(out, ip);
            out.push(']');
        }
    }
    out.push(':');
    push_u32(out, port as u32);
}

/// How xtables prints a string option: bare when it is only `[A-Za-z0-9_-]`, otherwise in double
/// quotes with `"`, `\` and `'` escaped by a backslash.
pub fn save_string(out: &mut String, value: &str) {
    out.push(' ');
    if !value.is_empty() && is_bare(value) {
        out.push_str(value);
        return;
    }
    out.push('"');
    push_escaped(out, value);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_like_xtables() {
        let mut s = String::new();
        save_string(&mut s, "x");
        save_string(&mut s, "ns2/svc2:p80");
        save_string(&mut s, "a\"b");
        save_string(&mut s, "");
        assert_eq!(s, " x \"ns2/svc2:p80\" \"a\\\"b\" \"\"");
        let mut p = String::new();
        comment_parts(&mut p, &["ns2/svc2:p80", " -> ", "10.0.0.1:80"]);
        comment_parts(&mut p, &["ab", "c"]);
        assert_eq!(
            p,
            " -m comment --comment \"ns2/svc2:p80 -> 10.0.0.1:80\" -m comment --comment abc"
        );
    }

    #[test]
    fn numbers_and_addresses() {
        let mut s = String::new();
        push_u32(&mut s, 0);
        s.push(' ');
        push_u32(&mut s, 4_294_967_295);
        s.push(' ');
        endpoint_addr(&mut s, &"10.0.0.255".parse().unwrap(), 65535);
        s.push(' ');
        endpoint_addr(&mut s, &"fd00::1".parse().unwrap(), 80);
        s.push(' ');
        network(&mut s, &"10.1.2.3/8".parse().unwrap());
        s.push(' ');
        push_ip(&mut s, &"0.9.10.255".parse().unwrap());
        s.push(' ');
        push_ip(&mut s, &"100.99.199.200".parse().unwrap());
        assert_eq!(
            s,
            "0 4294967295 10.0.0.255:65535 [fd00::1]:80 10.0.0.0/8 0.9.10.255 100.99.199.200"
        );
    }
}
