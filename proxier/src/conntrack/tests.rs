//! The ctnetlink codec against byte fixtures written from the kernel's layout (`nlmsghdr`,
//! `nfgenmsg`, `nlattr`s padded to 4 bytes, nests flagged `NLA_F_NESTED`, ports and ids
//! big-endian). The real kernel is exercised by `proxier/tests/conntrack.rs`.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_MULTIPART, NLM_F_REQUEST};
use rulegen::IpFamily;
use rulegen::sync::conntrack::{Flow, IPPROTO_UDP};

use super::codec::{self, ConntrackEntry, Reply};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn entry(src: &str, dst: &str, target: &str) -> ConntrackEntry {
    ConntrackEntry {
        flow: Flow {
            proto: IPPROTO_UDP,
            orig_src: ip(src),
            orig_dst: ip(dst),
            orig_sport: 40000,
            orig_dport: 53,
            reply_src: ip(target),
            reply_sport: 8053,
        },
        id: Some(0x0102_0304),
        zone: None,
        tuple_zone: None,
    }
}

/// Appends an attribute the way the kernel lays it out.
fn nla(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn nest(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&((4 + body.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&(kind | 0x8000).to_ne_bytes());
    out.extend_from_slice(body);
}

fn header(out: &mut Vec<u8>, len: usize, kind: u16, flags: u16, seq: u32) {
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
}

#[test]
fn a_deletion_names_the_original_tuple_and_id() {
    let mut got = Vec::new();
    codec::delete_request(
        &mut got,
        7,
        NLM_F_REQUEST | NLM_F_ACK,
        &entry("10.244.2.7", "10.96.0.10", "10.244.1.11"),
    );

    let mut ips = Vec::new();
    nla(&mut ips, 1, &[10, 244, 2, 7]); // CTA_IP_V4_SRC
    nla(&mut ips, 2, &[10, 96, 0, 10]); // CTA_IP_V4_DST
    let mut proto = Vec::new();
    nla(&mut proto, 1, &[17]); // CTA_PROTO_NUM
    nla(&mut proto, 2, &40000u16.to_be_bytes()); // CTA_PROTO_SRC_PORT
    nla(&mut proto, 3, &53u16.to_be_bytes()); // CTA_PROTO_DST_PORT
    let mut tuple = Vec::new();
    nest(&mut tuple, 1, &ips); // CTA_TUPLE_IP
    nest(&mut tuple, 2, &proto); // CTA_TUPLE_PROTO
    let mut body = vec![libc::AF_INET as u8, 0, 0, 0]; // nfgenmsg
    nest(&mut body, 1, &tuple); // CTA_TUPLE_ORIG
    nla(&mut body, 12, &[1, 2, 3, 4]); // CTA_ID
    let mut want = Vec::new();
    // (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    header(&mut want, 16 + body.len(), 0x0102, 5, 7);
    want.extend_from_slice(&body);
    assert_eq!(got, want);
    assert_eq!(got.len(), 80);
}

#[test]
fn a_deletion_in_a_zone_carries_the_zone() {
    let mut e = entry("fd00::7", "fd00:96::10", "fd00:244::11");
    e.zone = Some(5);
    e.tuple_zone = Some(6);
    e.id = None;
    let mut got = Vec::new();
    codec::delete_request(&mut got, 1, NLM_F_REQUEST, &e);

    let mut ips = Vec::new();
    let v6 = |s: &str| match ip(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => unreachable!(),
    };
    nla(&mut ips, 3, &v6("fd00::7")); // CTA_IP_V6_SRC
    nla(&mut ips, 4, &v6("fd00:96::10")); // CTA_IP_V6_DST
    let mut proto = Vec::new();
    nla(&mut proto, 1, &[17]);
    nla(&mut proto, 2, &40000u16.to_be_bytes());
    nla(&mut proto, 3, &53u16.to_be_bytes());
    let mut tuple = Vec::new();
    nest(&mut tuple, 1, &ips);
    nest(&mut tuple, 2, &proto);
    nla(&mut tuple, 3, &6u16.to_be_bytes()); // CTA_TUPLE_ZONE
    let mut body = vec![libc::AF_INET6 as u8, 0, 0, 0];
    nest(&mut body, 1, &tuple);
    nla(&mut body, 18, &5u16.to_be_bytes()); // CTA_ZONE
    let mut want = Vec::new();
    header(&mut want, 16 + body.len(), 0x0102, NLM_F_REQUEST, 1);
    want.extend_from_slice(&body);
    assert_eq!(got, want);
}

#[test]
fn the_dump_asks_for_udp_flows_of_one_family() {
    let mut got = Vec::new();
    codec::dump_request(&mut got, 3, IpFamily::V6, true);
    let mut proto = Vec::new();
    nla(&mut proto, 1, &[17]); // CTA_PROTO_NUM
    let mut tuple = Vec::new();
    nest(&mut tuple, 2, &proto); // CTA_TUPLE_PROTO
    let mut filter = Vec::new();
    nla(&mut filter, 1, &(1u32 << 3).to_ne_bytes()); // CTA_FILTER_ORIG_FLAGS: PROTO_NUM
    let mut body = vec![libc::AF_INET6 as u8, 0, 0, 0];
    nest(&mut body, 1, &tuple); // CTA_TUPLE_ORIG
    nest(&mut body, 25, &filter); // CTA_FILTER
    let mut want = Vec::new();
    // IPCTNL_MSG_CT_GET with NLM_F_REQUEST | NLM_F_DUMP
    header(&mut want, 16 + body.len(), 0x0101, 0x301, 3);
    want.extend_from_slice(&body);
    assert_eq!(got, want);

    let mut plain = Vec::new();
    codec::dump_request(&mut plain, 4, IpFamily::V4, false);
    let mut want = Vec::new();
    header(&mut want, 20, 0x0101, 0x301, 4);
    want.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    assert_eq!(plain, want);
}

/// Every message of `buf`, as the reader sees it for `family`.
fn read(buf: &[u8], family: IpFamily) -> Vec<(u32, u16, Reply)> {
    let mut out = Vec::new();
    codec::parse_datagram(buf, family, |s, f, r| out.push((s, f, r))).unwrap();
    out
}

#[test]
fn a_dump_datagram_reads_back_every_flow() {
    let a = entry("10.244.2.7", "10.96.0.10", "10.244.1.11");
    let mut b = entry("192.168.50.2", "10.96.0.10", "10.96.0.10");
    b.flow.orig_sport = 1;
    b.id = None;
    b.zone = Some(9);
    b.tuple_zone = Some(9);
    let mut buf = Vec::new();
    codec::flow_message(&mut buf, 11, NLM_F_MULTIPART, &a);
    codec::flow_message(&mut buf, 11, NLM_F_MULTIPART, &b);
    // NLMSG_DONE with status 0.
    header(&mut buf, 20, 3, NLM_F_MULTIPART, 11);
    buf.extend_from_slice(&0i32.to_ne_bytes());
    let got = read(&buf, IpFamily::V4);
    assert_eq!(
        got,
        vec![
            (11, NLM_F_MULTIPART, Reply::Flow(Some(a))),
            (11, NLM_F_MULTIPART, Reply::Flow(Some(b))),
            (11, NLM_F_MULTIPART, Reply::Done(0)),
        ]
    );
}

#[test]
fn ipv6_flows_read_back_and_other_families_are_skipped() {
    let e = entry("fd00::7", "fd00:96::10", "fd00:244::11");
    let mut buf = Vec::new();
    codec::flow_message(&mut buf, 1, 0, &e);
    assert_eq!(read(&buf, IpFamily::V6), vec![(1, 0, Reply::Flow(Some(e)))]);
    assert_eq!(read(&buf, IpFamily::V4), vec![(1, 0, Reply::Flow(None))]);
}

#[test]
fn a_flow_without_ports_is_skipped() {
    // An ICMP flow: protocol 1, no CTA_PROTO_*_PORT (its id/type/code are other attributes).
    let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
    for kind in [1, 2] {
        let mut ips = Vec::new();
        nla(&mut ips, 1, &[10, 0, 0, 1]);
        nla(&mut ips, 2, &[10, 0, 0, 2]);
        let mut proto = Vec::new();
        nla(&mut proto, 1, &[1]);
        nla(&mut proto, 4, &7u16.to_be_bytes()); // CTA_PROTO_ICMP_ID
        let mut tuple = Vec::new();
        nest(&mut tuple, 1, &ips);
        nest(&mut tuple, 2, &proto);
        nest(&mut body, kind, &tuple);
    }
    let mut buf = Vec::new();
    header(&mut buf, 16 + body.len(), 0x0100, 0, 2);
    buf.extend_from_slice(&body);
    assert_eq!(read(&buf, IpFamily::V4), vec![(2, 0, Reply::Flow(None))]);
}

#[test]
fn errors_and_acknowledgements_read_back() {
    let mut buf = Vec::new();
    for (seq, errno) in [(5u32, -libc::ENOENT), (6, 0)] {
        // NLMSG_ERROR: the errno, then the request's header (NETLINK_CAP_ACK: no payload).
        header(&mut buf, 36, 2, 0x100, seq);
        buf.extend_from_slice(&errno.to_ne_bytes());
        header(&mut buf, 80, 0x0102, 1, seq);
    }
    assert_eq!(
        read(&buf, IpFamily::V4),
        vec![
            (5, 0x100, Reply::Ack(libc::ENOENT)),
            (6, 0x100, Reply::Ack(0))
        ]
    );
}

#[test]
fn truncated_messages_and_attributes_are_errors() {
    let e = entry("10.244.2.7", "10.96.0.10", "10.244.1.11");
    let mut buf = Vec::new();
    codec::flow_message(&mut buf, 1, 0, &e);
    let err = |b: &[u8]| codec::parse_datagram(b, IpFamily::V4, |_, _, _| {}).unwrap_err();
    // The header claims more than the datagram holds.
    assert!(
        err(&buf[..buf.len() - 4]).0.contains("message length"),
        "{:?}",
        err(&buf[..buf.len() - 4])
    );
    // An attribute claims more than its message holds.
    let mut bad = buf.clone();
    bad[20..22].copy_from_slice(&2000u16.to_ne_bytes());
    assert!(err(&bad).0.contains("attribute"), "{:?}", err(&bad));
    // A header shorter than itself.
    let mut short = buf.clone();
    short[0..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(err(&short).0.contains("message length"));
}
