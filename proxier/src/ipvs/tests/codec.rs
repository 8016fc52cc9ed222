//! The codec against bytes written out by hand from the C layout: `struct nlmsghdr` (16 bytes),
//! `struct genlmsghdr` (4), then `struct nlattr`s (u16 length including the 4-byte header, u16
//! type, value, padding to 4). Host order is little-endian here (x86-64, aarch64), which is what
//! the native-order fields (AF, protocol, u32s) are written in; ports are big-endian.

#![cfg(target_endian = "little")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::constants::GENL_ID_CTRL;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use rulegen::model::Protocol;

use crate::ipvs::attrs::{
    AF_INET6, IP_VS_CONN_F_DROUTE, IP_VS_SVC_F_HASHED, IP_VS_SVC_F_PERSISTENT,
    IP_VS_SVC_F_SCHED_SH_PORT, IpvsCmdAttr, IpvsStats, NETMASK_V6,
};
use crate::ipvs::entry::{IpvsDest, IpvsService};
use crate::ipvs::error::{IpvsError, IpvsOp, Rejection};
use crate::ipvs::message::{IpvsCommand, IpvsMessage};
use crate::ipvs::socket::{CtrlReply, Step, dests_of, encode_request, read_datagram, services_of};

const FAMILY: u16 = 26;

fn tcp_443() -> IpvsService {
    IpvsService::new(
        Protocol::Tcp,
        IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
        443,
        "rr",
        0,
        0,
    )
}

/// `NEW_SERVICE -t 10.96.0.1:443 -s rr`, as ipvsadm's `ipvs_nl_fill_service_attr` lays it out.
#[rustfmt::skip]
const NEW_SERVICE_BYTES: [u8; 104] = [
    // struct nlmsghdr
    104, 0, 0, 0,                 // nlmsg_len
    26, 0,                        // nlmsg_type: the resolved family id
    5, 0,                         // NLM_F_REQUEST | NLM_F_ACK
    1, 0, 0, 0,                   // nlmsg_seq
    0, 0, 0, 0,                   // nlmsg_pid
    // struct genlmsghdr
    1, 1, 0, 0,                   // IPVS_CMD_NEW_SERVICE, version 1, reserved
    // IPVS_CMD_ATTR_SERVICE (not flagged NLA_F_NESTED, as ipvsadm and the kernel)
    84, 0, 1, 0,
    6, 0, 1, 0, 2, 0, 0, 0,       // IPVS_SVC_ATTR_AF = AF_INET, 2 bytes padding
    6, 0, 2, 0, 6, 0, 0, 0,       // IPVS_SVC_ATTR_PROTOCOL = IPPROTO_TCP
    20, 0, 3, 0,                  // IPVS_SVC_ATTR_ADDR: union nf_inet_addr, 16 bytes
    10, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    6, 0, 4, 0, 0x01, 0xbb, 0, 0, // IPVS_SVC_ATTR_PORT = 443, big-endian
    7, 0, 6, 0, b'r', b'r', 0, 0, // IPVS_SVC_ATTR_SCHED_NAME = "rr\0", 1 byte padding
    12, 0, 7, 0,                  // IPVS_SVC_ATTR_FLAGS: struct ip_vs_flags
    0, 0, 0, 0,                   //   flags
    0xff, 0xff, 0xff, 0xff,       //   mask: all of them
    8, 0, 8, 0, 0, 0, 0, 0,       // IPVS_SVC_ATTR_TIMEOUT = 0
    8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff, // IPVS_SVC_ATTR_NETMASK = 255.255.255.255
];

#[test]
fn new_service_encodes_to_the_c_layout() {
    let msg = IpvsMessage::new(
        IpvsCommand::NewService,
        vec![IpvsCmdAttr::Service(tcp_443().to_attrs())],
    );
    let bytes = encode_request(msg, FAMILY, NLM_F_REQUEST | NLM_F_ACK, 1);
    assert_eq!(bytes, NEW_SERVICE_BYTES);
}

#[test]
fn new_service_bytes_decode() {
    let nl = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&NEW_SERVICE_BYTES).unwrap();
    assert_eq!(nl.header.message_type, FAMILY);
    assert_eq!(nl.header.sequence_number, 1);
    let NetlinkPayload::InnerMessage(genl) = nl.payload else {
        panic!("not an inner message: {:?}", nl.payload)
    };
    assert_eq!(genl.header.cmd, 1);
    assert_eq!(genl.header.version, 1);
    assert_eq!(genl.payload.cmd, IpvsCommand::NewService);
    let svc = IpvsService::from_attrs(genl.payload.service_attrs().unwrap()).unwrap();
    assert_eq!(svc, tcp_443());
}

/// One destination of a `GET_DEST` dump as `ip_vs_genl_fill_dest` puts it, with both stats
/// nests (the 64-bit one with the `IPVS_STATS_ATTR_PAD` that `nla_put_u64_64bit` inserts on
/// architectures that need 8-byte alignment), followed by the dump's `NLMSG_DONE`.
#[rustfmt::skip]
fn dumped_dest_datagram() -> Vec<u8> {
    let mut b: Vec<u8> = Vec::new();
    b.extend_from_slice(&[
        // struct nlmsghdr
        0x68, 1, 0, 0,            // nlmsg_len = 360
        26, 0,                    // the family id
        2, 0,                     // NLM_F_MULTI
        7, 0, 0, 0,               // seq 7
        0x92, 0x10, 0, 0,         // pid 4242
        // struct genlmsghdr
        5, 1, 0, 0,               // IPVS_CMD_NEW_DEST, version 1
        // IPVS_CMD_ATTR_DEST
        0x54, 1, 2, 0,            // length 340
        20, 0, 1, 0,              // IPVS_DEST_ATTR_ADDR
        10, 244, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        6, 0, 2, 0, 0x1f, 0x90, 0, 0, // IPVS_DEST_ATTR_PORT = 8080, big-endian
        8, 0, 3, 0, 0, 0, 0, 0,   // IPVS_DEST_ATTR_FWD_METHOD = IP_VS_CONN_F_MASQ
        8, 0, 4, 0, 1, 0, 0, 0,   // IPVS_DEST_ATTR_WEIGHT = 1
        5, 0, 13, 0, 0, 0, 0, 0,  // IPVS_DEST_ATTR_TUN_TYPE (u8), 3 bytes padding
        6, 0, 14, 0, 0, 0, 0, 0,  // IPVS_DEST_ATTR_TUN_PORT (be16)
        6, 0, 15, 0, 0, 0, 0, 0,  // IPVS_DEST_ATTR_TUN_FLAGS (u16)
        8, 0, 5, 0, 0, 0, 0, 0,   // IPVS_DEST_ATTR_U_THRESH
        8, 0, 6, 0, 0, 0, 0, 0,   // IPVS_DEST_ATTR_L_THRESH
        8, 0, 7, 0, 3, 0, 0, 0,   // IPVS_DEST_ATTR_ACTIVE_CONNS = 3
        8, 0, 8, 0, 2, 0, 0, 0,   // IPVS_DEST_ATTR_INACT_CONNS = 2
        8, 0, 9, 0, 1, 0, 0, 0,   // IPVS_DEST_ATTR_PERSIST_CONNS = 1
        6, 0, 11, 0, 2, 0, 0, 0,  // IPVS_DEST_ATTR_ADDR_FAMILY = AF_INET
        // IPVS_DEST_ATTR_STATS: u32 counters, u64 bytes
        92, 0, 10, 0,
        8, 0, 1, 0, 5, 0, 0, 0,   // CONNS = 5
        8, 0, 2, 0, 100, 0, 0, 0, // INPKTS = 100
        8, 0, 3, 0, 90, 0, 0, 0,  // OUTPKTS = 90
        12, 0, 4, 0, 0x70, 0x17, 0, 0, 0, 0, 0, 0, // INBYTES = 6000
        12, 0, 5, 0, 0x88, 0x13, 0, 0, 0, 0, 0, 0, // OUTBYTES = 5000
        8, 0, 6, 0, 1, 0, 0, 0,   // CPS
        8, 0, 7, 0, 2, 0, 0, 0,   // INPPS
        8, 0, 8, 0, 3, 0, 0, 0,   // OUTPPS
        8, 0, 9, 0, 4, 0, 0, 0,   // INBPS
        8, 0, 10, 0, 5, 0, 0, 0,  // OUTBPS
        // IPVS_DEST_ATTR_STATS64: every counter u64; CONNS past 2^32 to tell them apart
        128, 0, 12, 0,
        4, 0, 11, 0,              // IPVS_STATS_ATTR_PAD
        12, 0, 1, 0, 5, 0, 0, 0, 1, 0, 0, 0,   // CONNS = 2^32 + 5
        12, 0, 2, 0, 100, 0, 0, 0, 0, 0, 0, 0,
        12, 0, 3, 0, 90, 0, 0, 0, 0, 0, 0, 0,
        12, 0, 4, 0, 0x70, 0x17, 0, 0, 0, 0, 0, 0,
        12, 0, 5, 0, 0x88, 0x13, 0, 0, 0, 0, 0, 0,
        12, 0, 6, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        12, 0, 7, 0, 2, 0, 0, 0, 0, 0, 0, 0,
        12, 0, 8, 0, 3, 0, 0, 0, 0, 0, 0, 0,
        12, 0, 9, 0, 4, 0, 0, 0, 0, 0, 0, 0,
        12, 0, 10, 0, 5, 0, 0, 0, 0, 0, 0, 0,
    ]);
    assert_eq!(b.len(), 360, "the fixture's own length field");
    b.extend_from_slice(&[
        // NLMSG_DONE, payload: int status 0
        20, 0, 0, 0, 3, 0, 2, 0, 7, 0, 0, 0, 0x92, 0x10, 0, 0,
        0, 0, 0, 0,
    ]);
    b
}

#[test]
fn dumped_destination_with_stats_decodes() {
    let datagram = dumped_dest_datagram();
    let mut out: Vec<IpvsMessage> = Vec::new();
    let step = read_datagram(&datagram, 7, IpvsOp::GetDests, &String::new, &mut out).unwrap();
    assert_eq!(step, Step::Done);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].cmd, IpvsCommand::NewDest);
    let dests = dests_of(&tcp_443(), &out).unwrap();
    assert_eq!(
        dests,
        vec![IpvsDest {
            addr: IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)),
            port: 8080,
            fwd_method: 0,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 3,
            inactive_conns: 2,
            persist_conns: 1,
            // The 64-bit nest wins over the 32-bit one.
            stats: Some(IpvsStats {
                conns: (1 << 32) + 5,
                inpkts: 100,
                outpkts: 90,
                inbytes: 6000,
                outbytes: 5000,
                cps: 1,
                inpps: 2,
                outpps: 3,
                inbps: 4,
                outbps: 5,
            }),
        }]
    );
    assert_eq!(dests[0].connections(), 5);
}

#[test]
fn dumped_destination_round_trips_through_the_dump_encoding() {
    // What the fake would put in a dump decodes to the same destination.
    let mut d = IpvsDest::masq(IpAddr::V6("fd00::5".parse().unwrap()), 53, 7);
    d.active_conns = 9;
    d.inactive_conns = 1;
    d.stats = Some(IpvsStats {
        conns: u64::MAX,
        inbytes: 1 << 40,
        ..IpvsStats::default()
    });
    let msg = IpvsMessage::new(
        IpvsCommand::NewDest,
        vec![IpvsCmdAttr::Dest(d.to_dump_attrs())],
    );
    let bytes = encode_request(msg, FAMILY, 2, 9);
    let mut out: Vec<IpvsMessage> = Vec::new();
    let step = read_datagram(&bytes, 9, IpvsOp::GetDests, &String::new, &mut out).unwrap();
    assert_eq!(step, Step::More, "no DONE yet");
    // The address family comes from IPVS_DEST_ATTR_ADDR_FAMILY, not from the service.
    assert_eq!(dests_of(&tcp_443(), &out).unwrap(), vec![d]);
}

#[test]
fn services_round_trip() {
    let v6 = IpAddr::V6("fd00:10:96::a".parse().unwrap());
    let mut persistent = IpvsService::new(Protocol::Udp, v6, 53, "mh", 0, 0);
    persistent.flags = IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_SCHED_SH_PORT;
    persistent.timeout = 10800;
    persistent.pe_name = Some("sip".to_string());
    let mut fwmark = IpvsService::new(
        Protocol::Tcp,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        0,
        "wrr",
        0,
        0,
    );
    fwmark.fwmark = 0x4000;
    let sctp = IpvsService::new(
        Protocol::Sctp,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        30000,
        "lc",
        0,
        0,
    );
    for svc in [tcp_443(), persistent.clone(), fwmark.clone(), sctp] {
        let msg = IpvsMessage::new(
            IpvsCommand::SetService,
            vec![IpvsCmdAttr::Service(svc.to_attrs())],
        );
        let bytes = encode_request(msg.clone(), FAMILY, NLM_F_REQUEST, 3);
        let nl = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(genl) = nl.payload else {
            panic!("not an inner message")
        };
        assert_eq!(genl.payload, msg, "message round trip");
        let mut expect = svc.clone();
        if svc.fwmark != 0 {
            // A fwmark service carries no protocol, address or port.
            expect.protocol = 0;
        }
        assert_eq!(
            IpvsService::from_attrs(genl.payload.service_attrs().unwrap()).unwrap(),
            expect
        );
    }
    assert_eq!(persistent.netmask, NETMASK_V6);
    assert_eq!(persistent.key().unwrap().addr, v6);
    assert_eq!(fwmark.key(), None, "fwmark services are never ours");
}

#[test]
fn dumped_services_keep_hashed_and_stats() {
    let mut svc = tcp_443();
    svc.flags = IP_VS_SVC_F_HASHED | IP_VS_SVC_F_PERSISTENT;
    svc.timeout = 60;
    svc.stats = Some(IpvsStats {
        conns: 42,
        outbps: 7,
        ..IpvsStats::default()
    });
    let msg = IpvsMessage::new(
        IpvsCommand::NewService,
        vec![IpvsCmdAttr::Service(svc.to_dump_attrs())],
    );
    let bytes = encode_request(msg, FAMILY, 2, 4);
    let mut out: Vec<IpvsMessage> = Vec::new();
    read_datagram(&bytes, 4, IpvsOp::GetServices, &String::new, &mut out).unwrap();
    let got = services_of(&out).unwrap();
    assert_eq!(got, vec![svc.clone()]);
    assert_eq!(got[0].user_flags(), IP_VS_SVC_F_PERSISTENT);
}

#[test]
fn destination_request_attributes_follow_ipvsadm() {
    let mut d = IpvsDest::masq(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 9)), 8443, 1);
    d.fwd_method = IP_VS_CONN_F_DROUTE;
    let msg = IpvsMessage::new(
        IpvsCommand::NewDest,
        vec![
            IpvsCmdAttr::Service(tcp_443().to_attrs()),
            IpvsCmdAttr::Dest(d.to_attrs()),
        ],
    );
    let bytes = encode_request(msg, FAMILY, NLM_F_REQUEST | NLM_F_ACK, 2);
    // The destination nest starts after the 104-byte service message.
    #[rustfmt::skip]
    let dest_nest: [u8; 72] = [
        72, 0, 2, 0,              // IPVS_CMD_ATTR_DEST
        6, 0, 11, 0, 2, 0, 0, 0,  // ADDR_FAMILY = AF_INET (first, as ipvsadm)
        20, 0, 1, 0, 10, 244, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        6, 0, 2, 0, 0x20, 0xfb, 0, 0, // PORT = 8443, big-endian
        8, 0, 3, 0, 3, 0, 0, 0,   // FWD_METHOD = IP_VS_CONN_F_DROUTE
        8, 0, 4, 0, 1, 0, 0, 0,   // WEIGHT = 1
        8, 0, 5, 0, 0, 0, 0, 0,   // U_THRESH
        8, 0, 6, 0, 0, 0, 0, 0,   // L_THRESH
    ];
    assert_eq!(bytes.len(), 104 + 72);
    assert_eq!(&bytes[0..4], &[176, 0, 0, 0]);
    assert_eq!(bytes[16], 5, "IPVS_CMD_NEW_DEST");
    assert_eq!(&bytes[104..], &dest_nest);
}

#[test]
fn ipv6_addresses_fill_the_union() {
    let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let svc = IpvsService::new(Protocol::Tcp, IpAddr::V6(a), 80, "rr", 0, 0);
    let attrs = svc.to_attrs();
    assert!(attrs.contains(&crate::ipvs::attrs::SvcAttr::Af(AF_INET6)));
    assert!(attrs.contains(&crate::ipvs::attrs::SvcAttr::Addr(a.octets())));
    assert!(attrs.contains(&crate::ipvs::attrs::SvcAttr::Netmask(128)));
}

#[test]
fn family_lookup_request_and_reply() {
    let req = GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName("IPVS".to_string())],
    };
    #[rustfmt::skip]
    let expect: [u8; 32] = [
        32, 0, 0, 0, 16, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, // nlmsghdr: GENL_ID_CTRL, REQUEST|ACK
        3, 2, 0, 0,                                       // CTRL_CMD_GETFAMILY, version 2
        9, 0, 2, 0, b'I', b'P', b'V', b'S', 0, 0, 0, 0,   // CTRL_ATTR_FAMILY_NAME = "IPVS"
    ];
    assert_eq!(encode_request(req, GENL_ID_CTRL, 5, 1), expect);

    #[rustfmt::skip]
    let reply: [u8; 76] = [
        // CTRL_CMD_NEWFAMILY reply
        56, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0, 0x92, 0x10, 0, 0,
        1, 2, 0, 0,
        9, 0, 2, 0, b'I', b'P', b'V', b'S', 0, 0, 0, 0,   // FAMILY_NAME
        6, 0, 1, 0, 26, 0, 0, 0,                          // FAMILY_ID = 26
        8, 0, 3, 0, 1, 0, 0, 0,                           // VERSION = 1
        8, 0, 99, 0, 0, 0, 0, 0,                          // an attribute from the future
        // the acknowledgement: NLMSG_ERROR with error 0
        20, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0x92, 0x10, 0, 0,
        0, 0, 0, 0,
    ];
    let mut out: Vec<CtrlReply> = Vec::new();
    let step = read_datagram(&reply, 1, IpvsOp::ResolveFamily, &String::new, &mut out).unwrap();
    assert_eq!(step, Step::Done);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].family_id, Some(26));
}

#[rustfmt::skip]
fn error_datagram(seq: u8, errno: i32) -> Vec<u8> {
    let mut b = vec![
        36, 0, 0, 0, 2, 0, 0, 0, seq, 0, 0, 0, 0x92, 0x10, 0, 0, // NLMSG_ERROR
    ];
    b.extend_from_slice(&(-errno).to_le_bytes());                // int error
    b.extend_from_slice(&[104, 0, 0, 0, 26, 0, 5, 0, seq, 0, 0, 0, 0, 0, 0, 0]); // the request's header
    b
}

#[test]
fn nlmsg_error_maps_to_typed_rejections() {
    let target = || "TCP 10.96.0.1:443".to_string();
    for (errno, rejection) in [
        (libc::EEXIST, Rejection::Exists),
        (libc::ENOENT, Rejection::NotFound),
        (libc::ESRCH, Rejection::NoService),
        (libc::EPERM, Rejection::PermissionDenied),
        (libc::EINVAL, Rejection::Other(libc::EINVAL)),
    ] {
        let mut out: Vec<IpvsMessage> = Vec::new();
        let err = read_datagram(
            &error_datagram(5, errno),
            5,
            IpvsOp::NewService,
            &target,
            &mut out,
        )
        .unwrap_err();
        assert_eq!(err.rejection(), Some(rejection), "errno {errno}");
        assert_eq!(rejection.errno(), errno);
        assert!(err.is_per_request());
        assert!(
            err.to_string()
                .starts_with("NEW_SERVICE TCP 10.96.0.1:443: "),
            "{err}"
        );
    }
}

#[test]
fn acks_complete_and_stale_replies_are_skipped() {
    let mut out: Vec<IpvsMessage> = Vec::new();
    // An error for another request (an earlier one that timed out) is not ours.
    let step = read_datagram(
        &error_datagram(4, libc::EEXIST),
        5,
        IpvsOp::NewDest,
        &String::new,
        &mut out,
    )
    .unwrap();
    assert_eq!(step, Step::More);
    let step = read_datagram(
        &error_datagram(5, 0),
        5,
        IpvsOp::NewDest,
        &String::new,
        &mut out,
    )
    .unwrap();
    assert_eq!(step, Step::Done);
    assert!(out.is_empty());
}

#[test]
fn failed_dumps_and_interrupted_dumps_are_errors() {
    // NLMSG_DONE with a negative status (-EACCES).
    #[rustfmt::skip]
    let done: [u8; 20] = [20, 0, 0, 0, 3, 0, 2, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0xf3, 0xff, 0xff, 0xff];
    let mut out: Vec<IpvsMessage> = Vec::new();
    let err = read_datagram(&done, 7, IpvsOp::GetServices, &String::new, &mut out).unwrap_err();
    assert_eq!(err.rejection(), Some(Rejection::Other(libc::EACCES)));

    let mut interrupted = dumped_dest_datagram();
    interrupted[6] |= 0x10; // NLM_F_DUMP_INTR in the first message's flags
    let err = read_datagram(&interrupted, 7, IpvsOp::GetDests, &String::new, &mut out).unwrap_err();
    assert!(matches!(err, IpvsError::Decode { .. }), "{err}");
}

#[test]
fn truncated_attributes_are_decode_errors() {
    let mut bytes = NEW_SERVICE_BYTES.to_vec();
    bytes[24] = 200; // the service nest claims more than the message holds
    let mut out: Vec<IpvsMessage> = Vec::new();
    let err = read_datagram(&bytes, 1, IpvsOp::GetServices, &String::new, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            IpvsError::Decode {
                op: IpvsOp::GetServices,
                ..
            }
        ),
        "{err}"
    );
}
