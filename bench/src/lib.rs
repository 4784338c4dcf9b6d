//! Shared code of the benchmark tools.

use std::net::SocketAddr;

use pingora_core::server::Server;
use pingora_core::server::configuration::{Opt, ServerConf};

/// A floor's `--route LISTEN=UPSTREAM`: requests arriving on LISTEN go to UPSTREAM.
pub fn parse_route(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (listen, upstream) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected LISTEN=UPSTREAM"))?;
    let parse = |a: &str| a.parse::<SocketAddr>().map_err(|e| format!("`{a}`: {e}"));
    Ok((parse(listen)?, parse(upstream)?))
}

/// The Pingora server a floor runs on: `threads` worker threads, no grace period on
/// shutdown, and its pid file and upgrade socket in /tmp, named after `name` and the first
/// listening port (so two floors never share them).
pub fn floor_server(name: &str, first_port: u16, threads: usize) -> Server {
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: format!("/tmp/{name}-{first_port}.pid"),
        upgrade_sock: format!("/tmp/{name}-{first_port}.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    server
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
