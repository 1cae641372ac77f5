//! Where a process that picked its own ports (`--listen 127.0.0.1:0`) says it listens: a small
//! text file, one `name address` line per listener (`grpc 127.0.0.1:40123`), written once after
//! binding. It is written beside and renamed into place, so a reader (a supervisor, a test that
//! started the process) sees all of it or nothing, and never races the process for a port.

use std::net::SocketAddr;
use std::path::Path;

use crate::{Error, Result};

/// Writes `addrs` to `path`, atomically.
pub fn write_addr_file(path: &Path, addrs: &[(&str, SocketAddr)]) -> Result<()> {
    let text: String = addrs
        .iter()
        .map(|(name, addr)| format!("{name} {addr}\n"))
        .collect();
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, text).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// The listeners of an address file: `(name, address)` in file order.
pub fn parse_addr_file(text: &str) -> Result<Vec<(String, SocketAddr)>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, addr) = line
                .split_once(' ')
                .ok_or_else(|| Error::invalid("address file", format!("{line:?}: no address")))?;
            let addr = addr
                .trim()
                .parse()
                .map_err(|e| Error::invalid("address file", format!("{line:?}: {e}")))?;
            Ok((name.to_string(), addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.addr");
        let grpc: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let health: SocketAddr = "[::1]:9".parse().unwrap();
        write_addr_file(&path, &[("grpc", grpc), ("health", health)]).unwrap();
        let read = parse_addr_file(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            read,
            [("grpc".to_string(), grpc), ("health".to_string(), health)]
        );
        assert!(!dir.path().join("coordinator.addr.partial").exists());
        assert!(parse_addr_file("grpc\n").is_err());
        assert!(parse_addr_file("grpc 127.0.0.1\n").is_err());
    }
}
