//! Two real Prosody servers, a.test and b.test, federating through xmpptap: the setup shared by the interop
//! tests. Each server's DNS view (the test's own DNS server) says that the other domain is served at xmpptap's
//! address; xmpptap's static routes send each domain to its real server, so both directions cross xmpptap and
//! the dialback verifications too. alice@a.test (`alice-pw`) and bob@b.test (`bob-pw`) are registered.

use super::dns::DnsServer;
use super::prosody::{Prosody, ProsodyConfig};
use super::xmpptap::Xmpptap;
use std::net::Ipv4Addr;

/// How the servers federate.
#[derive(Debug, Clone)]
pub struct Options {
    /// STARTTLS on S2S (`s2s_require_encryption`); plaintext otherwise.
    pub s2s_tls: bool,
    /// S2S over Direct TLS (XEP-0368): `_xmpps-server._tcp` records point at xmpptap's `s2s-tls` listener, and
    /// xmpptap reaches the servers' Direct TLS ports (`tls://` routes).
    pub direct_tls: bool,
    /// More `xmpptap proxy` flags (captures, key log, ...).
    pub xmpptap_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            s2s_tls: true,
            direct_tls: false,
            xmpptap_args: Vec::new(),
        }
    }
}

/// The running federation. Field order is drop order: the servers stop before xmpptap and their DNS.
pub struct Federation {
    pub a: Prosody,
    pub b: Prosody,
    pub tap: Xmpptap,
    pub dns: DnsServer,
    /// xmpptap's address.
    pub proxy_ip: Ipv4Addr,
}

impl Federation {
    /// Starts DNS, a.test on `127.<file>.<test>.2`, b.test on `.3`, xmpptap on `.10`, and waits until
    /// everything is ready.
    pub async fn start(file: u8, test: u8, options: Options) -> Federation {
        let dns = DnsServer::start(super::addr(file, test, 53).into()).await;
        let forward = dns.unbound_forward();
        let config = |domain: &str, host: u8| {
            let mut config = ProsodyConfig::new(domain, super::addr(file, test, host), &forward);
            config.s2s_tls = options.s2s_tls;
            config.s2s_direct_tls = options.direct_tls;
            config
        };
        let a = Prosody::start(config("a.test", 2));
        let b = Prosody::start(config("b.test", 3));

        let proxy_ip = super::addr(file, test, 10);
        let route = |p: &Prosody| match (options.direct_tls, p.s2s_direct_tls_port()) {
            (true, Some(port)) => format!("--route={}=tls://{}:{port}", p.domain(), p.ip()),
            _ => format!("--route={}={}", p.domain(), p.s2s_addr()),
        };
        let listen = if options.direct_tls {
            format!("--s2s-tls-listen={proxy_ip}:0")
        } else {
            format!("--s2s-listen={proxy_ip}:0")
        };
        let mut args = vec![
            listen,
            route(&a),
            route(&b),
            // Prosody's certificates are self-signed.
            String::from("--dangerous-accept-any-upstream-cert"),
        ];
        args.extend(options.xmpptap_args.iter().cloned());
        let tap = Xmpptap::start(&args).await;

        let service = if options.direct_tls {
            "_xmpps-server._tcp"
        } else {
            "_xmpp-server._tcp"
        };
        for domain in ["a.test", "b.test"] {
            let name = format!("{service}.{domain}");
            dns.add_srv(&name, 0, 0, tap.addr().port(), "proxy-host.test");
        }
        dns.add_a("proxy-host.test", proxy_ip);

        a.register("alice", "alice-pw").await;
        b.register("bob", "bob-pw").await;
        a.wait_ready().await;
        b.wait_ready().await;
        Federation {
            a,
            b,
            tap,
            dns,
            proxy_ip,
        }
    }

    /// Every server port of the federation: xmpptap's listener and both Prosody S2S ports.
    pub fn server_ports(&self) -> Vec<u16> {
        vec![
            self.tap.addr().port(),
            self.a.s2s_addr().port(),
            self.b.s2s_addr().port(),
        ]
    }
}
