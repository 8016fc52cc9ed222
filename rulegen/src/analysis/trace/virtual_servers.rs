//! `ipvsadm -Sn` text read back into virtual servers and their real servers, so the tracer
//! can follow a packet through IPVS the way the kernel schedules it.

use std::net::SocketAddr;

use super::save::SaveParseError;

/// Every virtual server of one `ipvsadm -Sn` text, in its order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedVirtualServers {
    /// The virtual servers.
    pub servers: Vec<SavedVirtualServer>,
}

/// One virtual server.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedVirtualServer {
    /// `tcp`, `udp` or `sctp`.
    pub proto: &'static str,
    /// Its address and port.
    pub address: SocketAddr,
    /// The scheduler (`rr`, `mh`, …).
    pub scheduler: String,
    /// Persistence timeout in seconds (sessionAffinity ClientIP), if any.
    pub persistence: Option<u32>,
    /// Real servers and their weights, in order.
    pub real_servers: Vec<(SocketAddr, u32)>,
}

fn parse_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

impl SavedVirtualServers {
    /// Parses `ipvsadm -Sn` (`-A` and `-a` lines).
    pub fn parse(text: &str) -> Result<SavedVirtualServers, SaveParseError> {
        let mut out = SavedVirtualServers::default();
        for (n, line) in text.lines().enumerate() {
            let err = |message: String| SaveParseError {
                line: n + 1,
                message,
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.is_empty() || words[0].starts_with('#') {
                continue;
            }
            let (add_server, mut i) = match words[0] {
                "-A" | "--add-service" => (true, 1),
                "-a" | "--add-server" => (false, 1),
                other => return Err(err(format!("unexpected {other:?} in ipvsadm -S text"))),
            };
            let mut proto = None;
            let mut address = None;
            let mut scheduler = String::from("wlc");
            let mut persistence = None;
            let mut real = None;
            let mut weight = 1;
            while i < words.len() {
                let w = words[i];
                let next = words.get(i + 1).copied();
                let mut take = || -> Result<&str, SaveParseError> {
                    i += 1;
                    next.ok_or_else(|| err(format!("{w} needs a value")))
                };
                match w {
                    "-t" | "--tcp-service" => proto = Some(("tcp", take()?)),
                    "-u" | "--udp-service" => proto = Some(("udp", take()?)),
                    "--sctp-service" => proto = Some(("sctp", take()?)),
                    "-f" | "--fwmark-service" => {
                        return Err(err("firewall-mark virtual servers are not modelled".into()));
                    }
                    "-s" | "--scheduler" => scheduler = take()?.to_string(),
                    "-p" | "--persistent" => {
                        let v = take()?;
                        persistence = Some(v.parse().map_err(|_| err(format!("bad -p {v:?}")))?)
                    }
                    "-r" | "--real-server" => real = Some(take()?),
                    "-w" | "--weight" => {
                        let v = take()?;
                        weight = v.parse().map_err(|_| err(format!("bad -w {v:?}")))?
                    }
                    "-b" | "--sched-flags" | "-M" | "--netmask" | "-x" | "-y" => {
                        take()?;
                    }
                    _ => {}
                }
                i += 1;
            }
            let (proto, addr) = proto.ok_or_else(|| err("no -t/-u/--sctp-service".into()))?;
            address = address.or(parse_addr(addr));
            let address = address.ok_or_else(|| err(format!("bad address {addr:?}")))?;
            if add_server {
                out.servers.push(SavedVirtualServer {
                    proto,
                    address,
                    scheduler,
                    persistence,
                    real_servers: Vec::new(),
                });
            } else {
                let r = real.ok_or_else(|| err("-a without -r".into()))?;
                let rs = parse_addr(r).ok_or_else(|| err(format!("bad real server {r:?}")))?;
                let vs = out
                    .servers
                    .iter_mut()
                    .find(|v| v.proto == proto && v.address == address)
                    .ok_or_else(|| err(format!("real server for unknown {proto} {address}")))?;
                vs.real_servers.push((rs, weight));
            }
        }
        Ok(out)
    }

    /// The virtual server for `proto` `address`, if any.
    pub fn find(&self, proto: &str, address: SocketAddr) -> Option<&SavedVirtualServer> {
        self.servers
            .iter()
            .find(|v| v.proto == proto && v.address == address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_services_and_real_servers() {
        let t = SavedVirtualServers::parse(
            "-A -t 10.96.12.1:80 -s rr -p 10800\n\
             -a -t 10.96.12.1:80 -r 10.244.2.30:8080 -m -w 1\n\
             -a -t 10.96.12.1:80 -r 10.244.3.31:8080 -m -w 0\n\
             -A -u [fd00:10:96::a]:53 -s mh -b flag-1,flag-2\n",
        )
        .unwrap();
        let vs = t.find("tcp", "10.96.12.1:80".parse().unwrap()).unwrap();
        assert_eq!(vs.persistence, Some(10800));
        assert_eq!(
            vs.real_servers,
            [
                ("10.244.2.30:8080".parse().unwrap(), 1),
                ("10.244.3.31:8080".parse().unwrap(), 0)
            ]
        );
        let v6 = t
            .find("udp", "[fd00:10:96::a]:53".parse().unwrap())
            .unwrap();
        assert_eq!((v6.scheduler.as_str(), v6.persistence), ("mh", None));
        assert!(t.find("udp", "10.96.12.1:80".parse().unwrap()).is_none());
        assert!(SavedVirtualServers::parse("-a -t 1.2.3.4:80 -r 10.0.0.1:80\n").is_err());
        assert!(SavedVirtualServers::parse("-A -t nonsense -s rr\n").is_err());
    }
}
