//! Name resolution: HOST as a name, an IPv4 or an IPv6 address.

use std::cell::OnceCell;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// HOST without the brackets that some people put around IPv6 addresses.
pub fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Every address of `host`, in the resolver's order of preference, without
/// duplicates. The ports are 0; IPv6 link-local scopes are kept.
pub fn resolve(host: &str) -> Result<Vec<SocketAddr>, String> {
    let bare = bare_host(host);
    if bare.is_empty() {
        return Err("empty host name".to_owned());
    }
    let found = (bare, 0u16)
        .to_socket_addrs()
        .map_err(|e| clean_error(&e))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in found {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err("the name has no IPv4 or IPv6 address".to_owned());
    }
    Ok(addrs)
}

/// std's resolver errors read "failed to lookup address information: Name or
/// service not known"; keep the part that says what happened.
fn clean_error(err: &std::io::Error) -> String {
    let text = err.to_string();
    text.strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text)
        .to_owned()
}

/// Resolves HOST at most once, when first needed: profile lookup may need the
/// addresses, and the knock always does.
#[derive(Debug)]
pub struct Resolver {
    host: String,
    result: OnceCell<Result<Vec<SocketAddr>, String>>,
}

impl Resolver {
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            result: OnceCell::new(),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn addrs(&self) -> Result<&[SocketAddr], &str> {
        match self.result.get_or_init(|| resolve(&self.host)) {
            Ok(addrs) => Ok(addrs),
            Err(message) => Err(message),
        }
    }

    /// The addresses (resolving now if not yet done); none if resolution fails.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addrs()
            .map(|a| a.iter().map(SocketAddr::ip).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_to_themselves() {
        let v4 = resolve("127.0.0.1").unwrap();
        assert_eq!(v4, vec!["127.0.0.1:0".parse().unwrap()]);
        let v6 = resolve("[::1]").unwrap();
        assert_eq!(v6, vec!["[::1]:0".parse().unwrap()]);
    }

    #[test]
    fn unknown_names_fail() {
        assert!(resolve("no-such-host.invalid").is_err());
        assert!(resolve("").is_err());
    }
}
