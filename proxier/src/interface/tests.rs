//! The pure parts of the interface module: request bytes, reply parsing, what to add and what
//! to remove. The kernel side is in `tests/interface.rs`.

use std::net::IpAddr;

use netlink_packet_core::{Emitable, NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_MULTIPART, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressMessage;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn host(index: u32, s: &str) -> Bound {
    let a = ip(s);
    Bound {
        index,
        prefix_len: if a.is_ipv4() { 32 } else { 128 },
        local: a.is_ipv4().then_some(a),
        address: Some(a),
    }
}

/// A netlink message's bytes, built by hand: header, then payload.
fn raw(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&4242u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

fn ack(seq: u32, errno: i32) -> Vec<u8> {
    // struct nlmsgerr: the error, then the request's header (capped: no payload).
    let mut payload = (-errno).to_ne_bytes().to_vec();
    payload.extend_from_slice(&[0; 16]);
    raw(NLMSG_ERROR, 0, seq, &payload)
}

#[test]
fn the_interface_is_named_as_upstream_names_it() {
    assert_eq!(IPVS_INTERFACE, "kube-ipvs0");
    assert_eq!(DummyInterface::new(IPVS_INTERFACE).name(), "kube-ipvs0");
}

#[test]
fn an_ipv4_address_is_added_as_a_host_address_with_local_and_address() {
    let mut buf = Vec::new();
    let msg = RouteNetlinkMessage::NewAddress(add_request(7, ip("10.96.0.1")));
    encode(msg, NLM_F_REQUEST | NLM_F_ACK, 9, &mut buf);
    #[rustfmt::skip]
    let want: Vec<u8> = [
        &40u32.to_ne_bytes()[..], &20u16.to_ne_bytes(), &5u16.to_ne_bytes(), &9u32.to_ne_bytes(), &0u32.to_ne_bytes(),
        // struct ifaddrmsg: AF_INET, /32, no flags, scope universe, index 7
        &[2, 32, 0, 0], &7u32.to_ne_bytes(),
        // IFA_LOCAL, IFA_ADDRESS
        &8u16.to_ne_bytes(), &2u16.to_ne_bytes(), &[10, 96, 0, 1],
        &8u16.to_ne_bytes(), &1u16.to_ne_bytes(), &[10, 96, 0, 1],
    ]
    .concat();
    assert_eq!(buf, want);
}

#[test]
fn an_ipv6_address_is_added_as_a_128_with_address_only() {
    let msg = add_request(3, ip("fd00::a"));
    assert_eq!(msg.header.family, AddressFamily::Inet6);
    assert_eq!(msg.header.prefix_len, 128);
    assert_eq!(msg.header.index, 3);
    assert_eq!(msg.header.flags.bits(), 0);
    assert_eq!(
        msg.attributes,
        vec![AddressAttribute::Address(ip("fd00::a"))]
    );
}

#[test]
fn a_deletion_names_the_address_as_it_was_dumped() {
    let b = Bound {
        index: 4,
        prefix_len: 24,
        local: Some(ip("10.1.0.1")),
        address: Some(ip("10.1.0.9")),
    };
    let msg = del_request(&b);
    assert_eq!(msg.header.family, AddressFamily::Inet);
    assert_eq!(msg.header.prefix_len, 24);
    assert_eq!(msg.header.index, 4);
    assert_eq!(
        msg.attributes,
        vec![
            AddressAttribute::Local(ip("10.1.0.1")),
            AddressAttribute::Address(ip("10.1.0.9")),
        ]
    );
    let v6 = del_request(&host(4, "fd00::1"));
    assert_eq!(v6.header.family, AddressFamily::Inet6);
    assert_eq!(v6.header.prefix_len, 128);
    assert_eq!(
        v6.attributes,
        vec![AddressAttribute::Address(ip("fd00::1"))]
    );
}

#[test]
fn messages_of_one_datagram_are_aligned_and_numbered() {
    let mut buf = Vec::new();
    for (seq, a) in [(1, "10.0.0.1"), (2, "fd00::1"), (3, "10.0.0.2")] {
        let msg = RouteNetlinkMessage::DelAddress(del_request(&host(2, a)));
        encode(msg, NLM_F_REQUEST | NLM_F_ACK, seq, &mut buf);
    }
    assert_eq!(buf.len() % 4, 0);
    let mut off = 0;
    let mut seqs = Vec::new();
    while off < buf.len() {
        let nb = NetlinkBuffer::new_checked(&buf[off..]).unwrap();
        assert_eq!(nb.message_type(), 21); // RTM_DELADDR
        seqs.push(nb.sequence_number());
        off += (nb.length() as usize).next_multiple_of(4);
    }
    assert_eq!(seqs, [1, 2, 3]);
}

#[test]
fn a_dummy_link_request_names_the_link_and_its_kind() {
    let info = LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]);
    let mut buf = Vec::new();
    let msg = RouteNetlinkMessage::NewLink(link_request("kube-ipvs0", vec![info]));
    encode(msg, NLM_F_REQUEST | NLM_F_ACK, 1, &mut buf);
    let nb = NetlinkBuffer::new_checked(&buf[..]).unwrap();
    assert_eq!(nb.message_type(), RTM_NEWLINK);
    let payload = nb.payload();
    // struct ifinfomsg is all zero: family, type, index, flags, change.
    assert_eq!(&payload[..16], &[0; 16]);
    let text = String::from_utf8_lossy(&payload[16..]);
    assert!(text.contains("kube-ipvs0\0"), "{payload:?}");
    assert!(text.contains("dummy"), "{payload:?}");
}

#[test]
fn a_dump_datagram_parses_into_addresses_and_its_end() {
    let mut buf = Vec::new();
    for (seq, a) in [(5, "10.96.0.1"), (5, "10.96.0.2")] {
        let mut nl = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(add_request(3, ip(a))));
        nl.header.message_type = RTM_NEWADDR;
        nl.header.flags = NLM_F_MULTIPART;
        nl.header.sequence_number = seq;
        nl.finalize();
        let start = buf.len();
        buf.resize(start + nl.buffer_len(), 0);
        nl.serialize(&mut buf[start..]);
    }
    buf.extend(raw(NLMSG_DONE, NLM_F_MULTIPART, 5, &0i32.to_ne_bytes()));
    let replies = parse_datagram(&buf, InterfaceOp::GetAddresses).unwrap();
    assert_eq!(
        replies,
        vec![
            (5, Reply::Address(host(3, "10.96.0.1"), false)),
            (5, Reply::Address(host(3, "10.96.0.2"), false)),
            (5, Reply::Done(0)),
        ]
    );
}

#[test]
fn an_interrupted_dump_is_flagged() {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.prefix_len = 64;
    msg.header.index = 1;
    msg.attributes
        .push(AddressAttribute::Address(ip("2001:db8::1")));
    let mut body = vec![0u8; msg.buffer_len()];
    msg.emit(&mut body);
    let buf = raw(RTM_NEWADDR, NLM_F_MULTIPART | NLM_F_DUMP_INTR, 8, &body);
    let replies = parse_datagram(&buf, InterfaceOp::GetAddresses).unwrap();
    let want = Bound {
        index: 1,
        prefix_len: 64,
        local: None,
        address: Some(ip("2001:db8::1")),
    };
    assert_eq!(replies, vec![(8, Reply::Address(want, true))]);
}

#[test]
fn acknowledgements_carry_their_errno() {
    let buf = [ack(1, 0), ack(2, libc::EEXIST), ack(3, libc::EOPNOTSUPP)].concat();
    let replies = parse_datagram(&buf, InterfaceOp::AddAddress).unwrap();
    assert_eq!(
        replies,
        vec![
            (1, Reply::Ack(0)),
            (2, Reply::Ack(libc::EEXIST)),
            (3, Reply::Ack(libc::EOPNOTSUPP)),
        ]
    );
}

#[test]
fn a_link_reply_gives_its_index() {
    let mut payload = vec![0u8; 16];
    payload[4..8].copy_from_slice(&12u32.to_ne_bytes());
    // An attribute this module never reads, to show it is skipped whatever it holds.
    payload.extend_from_slice(&8u16.to_ne_bytes());
    payload.extend_from_slice(&9999u16.to_ne_bytes());
    payload.extend_from_slice(&[1, 2, 3, 4]);
    let buf = raw(RTM_NEWLINK, 0, 4, &payload);
    assert_eq!(
        parse_datagram(&buf, InterfaceOp::GetLink).unwrap(),
        vec![(4, Reply::Link(12))]
    );
}

#[test]
fn a_truncated_message_is_an_error_not_a_panic() {
    let mut buf = ack(1, 0);
    buf[0] = 200; // claims more bytes than the datagram holds
    let err = parse_datagram(&buf, InterfaceOp::DelAddress).unwrap_err();
    assert!(matches!(err, InterfaceError::Decode { .. }), "{err}");
    let short = raw(NLMSG_ERROR, 0, 1, &[0, 0]);
    assert!(parse_datagram(&short, InterfaceOp::DelAddress).is_err());
}

#[test]
fn loopback_and_link_local_addresses_do_not_count() {
    assert!(counts(&ip("10.96.0.1"), IpFamily::V4));
    assert!(!counts(&ip("10.96.0.1"), IpFamily::V6));
    assert!(!counts(&ip("127.0.0.1"), IpFamily::V4));
    assert!(!counts(&ip("127.1.2.3"), IpFamily::V4));
    assert!(!counts(&ip("::1"), IpFamily::V6));
    assert!(!counts(&ip("fe80::1"), IpFamily::V6));
    assert!(!counts(&ip("febf::1"), IpFamily::V6));
    assert!(counts(&ip("fec0::1"), IpFamily::V6));
    assert!(counts(&ip("fd00::1"), IpFamily::V6));
    assert!(
        counts(&ip("169.254.1.1"), IpFamily::V4),
        "upstream keeps v4 link-local"
    );
}

#[test]
fn only_the_missing_addresses_of_the_family_are_added_once_each() {
    let present = [host(1, "10.0.0.1"), host(1, "fd00::1")];
    let wanted = [
        ip("10.0.0.1"),
        ip("10.0.0.2"),
        ip("fd00::2"),
        ip("10.0.0.2"),
        ip("10.0.0.3"),
    ];
    assert_eq!(
        missing(&present, IpFamily::V4, &wanted),
        [ip("10.0.0.2"), ip("10.0.0.3")]
    );
    assert_eq!(missing(&present, IpFamily::V6, &wanted), [ip("fd00::2")]);
    // Present with another prefix still counts as bound, as upstream compares IPs only.
    let wide = [Bound {
        prefix_len: 24,
        ..host(1, "10.0.0.2")
    }];
    assert_eq!(
        missing(&wide, IpFamily::V4, &wanted),
        [ip("10.0.0.1"), ip("10.0.0.3")]
    );
}

#[test]
fn only_unwanted_addresses_of_the_family_are_removed() {
    let present = [
        host(1, "10.0.0.1"),
        host(1, "10.0.0.2"),
        host(1, "127.0.0.2"),
        host(1, "fd00::1"),
        Bound {
            prefix_len: 64,
            ..host(1, "fe80::1")
        },
    ];
    let wanted = [ip("10.0.0.1")];
    let v4: Vec<_> = surplus(&present, IpFamily::V4, &wanted)
        .iter()
        .filter_map(|b| b.ip())
        .collect();
    assert_eq!(v4, [ip("10.0.0.2")]);
    let v6: Vec<_> = surplus(&present, IpFamily::V6, &wanted)
        .iter()
        .filter_map(|b| b.ip())
        .collect();
    assert_eq!(v6, [ip("fd00::1")]);
    assert!(surplus(&present, IpFamily::V6, &[ip("fd00::1")]).is_empty());
}

#[test]
fn errors_say_what_failed() {
    let e = InterfaceError::NoDummySupport {
        name: "kube-ipvs0".to_string(),
    };
    assert_eq!(
        e.to_string(),
        "cannot create kube-ipvs0: the kernel has no dummy interface support (modprobe dummy)"
    );
    let e = InterfaceError::Rejected {
        op: InterfaceOp::AddAddress,
        target: "10.0.0.1 on kube-ipvs0".to_string(),
        errno: libc::EACCES,
    };
    assert!(
        e.to_string()
            .starts_with("RTM_NEWADDR 10.0.0.1 on kube-ipvs0: Permission denied"),
        "{e}"
    );
    assert_eq!(e.errno(), Some(libc::EACCES));
    assert_eq!(
        InterfaceError::NotFound {
            name: "x".to_string()
        }
        .errno(),
        None
    );
}
