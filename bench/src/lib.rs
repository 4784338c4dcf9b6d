//! Shared code of the benchmark tools.

use std::net::SocketAddr;

/// A floor's `--route LISTEN=UPSTREAM`: requests arriving on LISTEN go to UPSTREAM.
pub fn parse_route(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (listen, upstream) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected LISTEN=UPSTREAM"))?;
    let parse = |a: &str| a.parse::<SocketAddr>().map_err(|e| format!("`{a}`: {e}"));
    Ok((parse(listen)?, parse(upstream)?))
}

#[cfg(test)]
mod tests {
    use super::parse_route;

    #[test]
    fn routes_read_as_listen_then_upstream() {
        let (listen, upstream) = parse_route("127.0.0.1:1=127.0.0.1:2").unwrap();
        assert_eq!((listen.port(), upstream.port()), (1, 2));
        assert!(parse_route("127.0.0.1:1").is_err());
        assert!(parse_route("127.0.0.1:1=nowhere").is_err());
    }
}
