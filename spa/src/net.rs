//! The little networking the client does: find the server, send one packet (UDP, TCP or an
//! HTTP GET), and learn our external address from a plain-HTTP "what is my IP" page (`-R`).

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

use crate::opts::Transport;

/// The User-Agent fwknop 2.6.10 sends; fwknopd's SPA-over-HTTP mode requires it to start with
/// `Fwknop`.
pub(crate) const USER_AGENT: &str = "Fwknop/2.6.10";
/// Safety limit on connects and reads.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP answer read for `-R`.
const MAX_RESPONSE: u64 = 64 * 1024;

/// Resolves `host` (a name, an IPv4 or an IPv6 address, optionally in brackets) and `port`.
pub(crate) fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    // RFC 6761: names under .invalid never resolve, so do not ask a DNS server about them.
    let lower = bare.trim_end_matches('.').to_ascii_lowercase();
    if lower == "invalid" || lower.ends_with(".invalid") {
        bail!("cannot resolve destination {host:?}");
    }
    (bare, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("cannot resolve destination {host:?}"))
}

/// The payload of fwknop's HTTP transport: `GET /<spa>` with `+` → `-` and `/` → `_`.
pub(crate) fn http_request(spa: &str, host: &str) -> String {
    let path: String = spa
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    format!(
        "GET /{path} HTTP/1.1\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
}

/// Sends the packet to `dest` the chosen way.
pub(crate) fn send(spa: &str, dest: SocketAddr, host: &str, transport: Transport) -> Result<()> {
    match transport {
        Transport::Udp => {
            let bind: SocketAddr = match dest {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let sock = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
            let n = sock.send_to(spa.as_bytes(), dest).with_context(|| format!("cannot send to {dest}"))?;
            ensure!(n == spa.len(), "short send to {dest}");
        }
        Transport::Tcp | Transport::Http => {
            let mut s = TcpStream::connect_timeout(&dest, TIMEOUT)
                .with_context(|| format!("cannot connect to {dest}"))?;
            let data = match transport {
                Transport::Http => http_request(spa, host),
                _ => spa.to_owned(),
            };
            s.set_write_timeout(Some(TIMEOUT))?;
            s.write_all(data.as_bytes()).with_context(|| format!("cannot send to {dest}"))?;
            s.flush()?;
        }
    }
    Ok(())
}

/// A parsed `http://host[:port]/path` URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

/// Parses a plain-HTTP URL. `https://` is refused: this client carries no TLS library.
pub(crate) fn parse_http_url(url: &str) -> Result<HttpUrl> {
    if url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")) {
        bail!("https URLs are not supported by --resolve-url (no TLS in this client); use an http:// URL");
    }
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .with_context(|| format!("invalid resolve URL {url:?} (expected http://host[:port]/path)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6.split_once(']').context("invalid IPv6 host in resolve URL")?;
        (h, tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    ensure!(!host.is_empty(), "invalid resolve URL {url:?}: no host");
    let port = match port {
        Some(p) => p.parse().ok().filter(|&p: &u16| p != 0).context("invalid port in resolve URL")?,
        None => 80,
    };
    ensure!(path.bytes().all(|b| b.is_ascii_graphic()), "invalid path in resolve URL");
    Ok(HttpUrl { host: host.to_owned(), port, path: path.to_owned() })
}

/// The first IPv4 address in `body`, else the first IPv6 address.
pub(crate) fn first_ip(body: &str) -> Option<IpAddr> {
    let v4 = body
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find_map(|t| t.parse::<Ipv4Addr>().ok())
        .map(IpAddr::V4);
    v4.or_else(|| {
        body.split(|c: char| !(c.is_ascii_hexdigit() || c == ':' || c == '.'))
            .filter(|t| t.contains(':'))
            .find_map(|t| t.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6)
    })
}

/// Fetches `url` with a small HTTP/1.1 GET and takes the first address in the body.
pub(crate) fn resolve_external_ip(url: &str) -> Result<IpAddr> {
    let u = parse_http_url(url)?;
    let addr = resolve(&u.host, u.port)?;
    let mut s =
        TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let host_header = if u.host.contains(':') { format!("[{}]", u.host) } else { u.host.clone() };
    let req = format!(
        "GET {} HTTP/1.1\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nHost: {host_header}\r\nConnection: close\r\n\r\n",
        u.path
    );
    s.write_all(req.as_bytes()).context("cannot send the HTTP request")?;
    let resp = read_response(&mut s)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    ensure!(code == "200", "HTTP request failed: {status}");
    first_ip(body).context("no IP address in the HTTP response")
}

/// Reads one HTTP response: until the body has its `Content-Length`, or the peer closes.
fn read_response(s: &mut impl std::io::Read) -> Result<Vec<u8>> {
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).context("cannot read the HTTP response")?;
        if n == 0 {
            return Ok(resp);
        }
        resp.extend_from_slice(&buf[..n]);
        ensure!(resp.len() as u64 <= MAX_RESPONSE, "HTTP response over {MAX_RESPONSE} bytes");
        let text = String::from_utf8_lossy(&resp);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|len| body.len() >= len) {
                return Ok(resp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_transport_request() {
        let r = http_request("ab+cd/ef", "gw.lan");
        assert_eq!(
            r,
            "GET /ab-cd_ef HTTP/1.1\r\nUser-Agent: Fwknop/2.6.10\r\nAccept: */*\r\nHost: gw.lan\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/ip").unwrap(),
            HttpUrl { host: "127.0.0.1".into(), port: 8080, path: "/ip".into() }
        );
        assert_eq!(
            parse_http_url("HTTP://example.org").unwrap(),
            HttpUrl { host: "example.org".into(), port: 80, path: "/".into() }
        );
        assert_eq!(parse_http_url("http://[::1]:81/x").unwrap().host, "::1");
        assert!(parse_http_url("https://example.org/").unwrap_err().to_string().contains("https"));
        assert!(parse_http_url("ftp://x/").is_err());
        assert!(parse_http_url("http://x:0/").is_err());
    }

    #[test]
    fn first_address_in_body() {
        assert_eq!(first_ip("Your IP: 203.0.113.7\n"), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(first_ip("<b>2001:db8::7</b> or 198.51.100.1"), Some("198.51.100.1".parse().unwrap()));
        assert_eq!(first_ip("<b>2001:db8::7</b>"), Some("2001:db8::7".parse().unwrap()));
        assert_eq!(first_ip("version 1.2.3 only"), None);
    }

    #[test]
    fn responses_end_at_content_length_or_close() {
        let mut keep_alive: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n1.2.3.4\nJUNK";
        let r = read_response(&mut keep_alive).unwrap();
        assert!(r.ends_with(b"1.2.3.4\nJUNK"), "reads what arrived in one go");
        let full: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n1.2.3.4\n";
        let mut closed = full;
        assert_eq!(read_response(&mut closed).unwrap(), full);
    }

    #[test]
    fn resolve_literals() {
        assert_eq!(resolve("10.0.0.1", 62201).unwrap(), "10.0.0.1:62201".parse().unwrap());
        assert_eq!(resolve("fd00::1", 1).unwrap(), "[fd00::1]:1".parse().unwrap());
        assert_eq!(resolve("[fd00::1]", 1).unwrap(), "[fd00::1]:1".parse().unwrap());
        // Answered locally, without a DNS query.
        let e = resolve("no-such-host.invalid", 1).unwrap_err();
        assert_eq!(e.to_string(), "cannot resolve destination \"no-such-host.invalid\"");
    }
}
