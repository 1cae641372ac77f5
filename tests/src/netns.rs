//! Hosts of their own for tests: network namespaces (`ip netns`) joined by veth pairs, each
//! with its own address, whose links a test takes down and up. Needs root (CI runs as root);
//! [`Hosts::create`] says why when namespaces cannot be made, so a test can skip with that.

use std::process::{Command, Stdio};

use crate::procs::{Proc, binary};

/// Namespaces made for one test, removed (with their links and anything left in them) on drop.
pub struct Hosts {
    tag: String,
    names: Vec<String>,
}

/// One veth link between two namespaces: its two ends' device names and addresses.
#[derive(Clone, Debug)]
pub struct Link {
    /// Namespace and device of the first end (`None`: the test's own namespace).
    pub a: (Option<String>, String),
    /// Namespace and device of the second end.
    pub b: (Option<String>, String),
    /// The first end's address.
    pub addr_a: String,
    /// The second end's address.
    pub addr_b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip [-n NS] ARGS`.
fn ip_in(ns: Option<&str>, args: &[&str]) -> Result<(), String> {
    match ns {
        Some(ns) => {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            ip(&all)
        }
        None => ip(args),
    }
}

impl Hosts {
    /// Creates one namespace per name (loopback up), or says why it cannot.
    pub fn create(names: &[&str]) -> Result<Hosts, String> {
        let tag = format!("ctc{}", std::process::id() % 100_000);
        let mut hosts = Hosts {
            tag,
            names: Vec::new(),
        };
        for name in names {
            let ns = hosts.ns(name);
            let _ = ip(&["netns", "del", &ns]);
            ip(&["netns", "add", &ns])?;
            hosts.names.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// The namespace's full name.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.tag)
    }

    /// Joins host `a` (`None`: the test's own namespace) to host `b` with a veth pair on the
    /// subnet `10.231.<subnet>.0/24`: `a` is .1, `b` is .2.
    pub fn link(&self, a: Option<&str>, b: &str, subnet: u8) -> Result<Link, String> {
        let dev_a = format!("{}-{subnet}a", self.tag);
        let dev_b = format!("{}-{subnet}b", self.tag);
        let ns_a = a.map(|a| self.ns(a));
        let ns_b = self.ns(b);
        let _ = ip(&["link", "del", &dev_a]);
        ip(&[
            "link", "add", &dev_a, "type", "veth", "peer", "name", &dev_b,
        ])?;
        if let Some(ns) = &ns_a {
            ip(&["link", "set", &dev_a, "netns", ns])?;
        }
        ip(&["link", "set", &dev_b, "netns", &ns_b])?;
        let addr_a = format!("10.231.{subnet}.1");
        let addr_b = format!("10.231.{subnet}.2");
        ip_in(
            ns_a.as_deref(),
            &["addr", "add", &format!("{addr_a}/24"), "dev", &dev_a],
        )?;
        ip_in(
            Some(&ns_b),
            &["addr", "add", &format!("{addr_b}/24"), "dev", &dev_b],
        )?;
        ip_in(ns_a.as_deref(), &["link", "set", &dev_a, "up"])?;
        ip_in(Some(&ns_b), &["link", "set", &dev_b, "up"])?;
        Ok(Link {
            a: (ns_a, dev_a),
            b: (Some(ns_b), dev_b),
            addr_a,
            addr_b,
        })
    }

    /// Takes a link down (both ends lose carrier: nothing crosses) or brings it back up.
    pub fn set_link(&self, link: &Link, up: bool) {
        let state = if up { "up" } else { "down" };
        for (ns, dev) in [&link.a, &link.b] {
            ip_in(ns.as_deref(), &["link", "set", dev, state]).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Starts a built binary of the workspace inside host `name`, with `RUST_LOG=warn`.
    pub fn start(&self, name: &str, bin: &str, args: &[&str]) -> Proc {
        let ns = self.ns(name);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(binary(bin))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin} in {ns}: {e}"));
        Proc(child)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            // Processes still inside hold the namespace; they are the test's `Proc`s, dropped
            // (killed) before this, or gone with it.
            let _ = ip(&["netns", "del", ns]);
        }
        // The test's own end of a link to a removed namespace goes with its peer.
    }
}
