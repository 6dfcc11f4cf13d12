//! The little networking the client does: find the server, send one packet (UDP, TCP or an
//! HTTP GET), and learn our external address from a "what is my IP" page (`-R`): over HTTPS
//! by default ([`crate::tls`]), as fwknop does through wget, or over plain HTTP when asked
//! (`--resolve-http-only`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

use crate::opts::Transport;

/// The User-Agent fwknop 2.6.10 sends; fwknopd's SPA-over-HTTP mode requires it to start with
/// `Fwknop`.
pub(crate) const USER_AGENT: &str = "Fwknop/2.6.10";
/// fwknop's default `-R` page, fetched over HTTPS (fwknop: wget `--secure-protocol=auto`).
pub(crate) const RESOLVE_URL: &str = "https://www.cipherdyne.org/cgi-bin/myip";
/// fwknop's `--resolve-http-only` pages: the first, then its backup.
pub(crate) const RESOLVE_URLS_HTTP: [&str; 2] =
    ["http://www.cipherdyne.org/cgi-bin/myip", "http://www.cipherdyne.com/cgi-bin/myip"];
/// Safety limit on connects and reads.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP answer read for `-R`.
pub(crate) const MAX_RESPONSE: u64 = 64 * 1024;

/// Resolves `host` (a name, an IPv4 or an IPv6 address, optionally in brackets) and `port`;
/// with `ipv4_only`, a name only to an IPv4 address (`--server-resolve-ipv4`).
pub(crate) fn resolve(host: &str, port: u16, ipv4_only: bool) -> Result<SocketAddr> {
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
        .and_then(|mut a| a.find(|a| !ipv4_only || a.is_ipv4()))
        .with_context(|| format!("cannot resolve destination {host:?}"))
}

/// The payload of fwknop's HTTP transport: `GET /<spa>` with `+` → `-` and `/` → `_`.
pub(crate) fn http_request(spa: &str, host: &str, agent: &str) -> String {
    let path: String = spa
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    format!(
        "GET /{path} HTTP/1.1\r\nUser-Agent: {agent}\r\nAccept: */*\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
}

/// How to send, besides the transport.
#[derive(Clone, Debug, Default)]
pub(crate) struct SendOptions {
    /// The local UDP port to send from (`-S`).
    pub(crate) source_port: Option<u16>,
    /// The User-Agent for `-P http`.
    pub(crate) agent: Option<String>,
}

/// Sends the packet to `dest` the chosen way.
pub(crate) fn send(
    spa: &str,
    dest: SocketAddr,
    host: &str,
    transport: Transport,
    o: &SendOptions,
) -> Result<()> {
    ensure!(
        o.source_port.is_none() || transport == Transport::Udp,
        "-S/--source-port works with -P udp only (a TCP connection takes the port the system gives)"
    );
    match transport {
        Transport::Udp => {
            let port = o.source_port.unwrap_or(0);
            let bind: SocketAddr = match dest {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
            };
            let sock =
                UdpSocket::bind(bind).with_context(|| format!("cannot open a UDP socket on port {port}"))?;
            let n = sock.send_to(spa.as_bytes(), dest).with_context(|| format!("cannot send to {dest}"))?;
            ensure!(n == spa.len(), "short send to {dest}");
        }
        Transport::Tcp | Transport::Http => {
            let mut s = TcpStream::connect_timeout(&dest, TIMEOUT)
                .with_context(|| format!("cannot connect to {dest}"))?;
            let data = match transport {
                Transport::Http => http_request(spa, host, o.agent.as_deref().unwrap_or(USER_AGENT)),
                _ => spa.to_owned(),
            };
            s.set_write_timeout(Some(TIMEOUT))?;
            s.write_all(data.as_bytes()).with_context(|| format!("cannot send to {dest}"))?;
            s.flush()?;
        }
    }
    Ok(())
}

/// A parsed `http[s]://host[:port]/path` URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Url {
    /// `https://`.
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

/// Parses an `http://` or `https://` URL.
pub(crate) fn parse_url(url: &str) -> Result<Url> {
    let scheme = |p: &str| url.get(..p.len()).filter(|s| s.eq_ignore_ascii_case(p)).map(|_| &url[p.len()..]);
    let (tls, rest) = match (scheme("https://"), scheme("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => bail!("invalid resolve URL {url:?} (expected https://host[:port]/path)"),
    };
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
        None if tls => 443,
        None => 80,
    };
    ensure!(path.bytes().all(|b| b.is_ascii_graphic()), "invalid path in resolve URL");
    Ok(Url { tls, host: host.to_owned(), port, path: path.to_owned() })
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

/// How `-R` fetches its page.
#[derive(Clone, Debug, Default)]
pub(crate) struct ResolveOptions {
    /// `--resolve-url`; fwknop's pages when absent.
    pub(crate) url: Option<String>,
    /// `--resolve-http-only`.
    pub(crate) http_only: bool,
    /// `-u`.
    pub(crate) agent: Option<String>,
}

/// Learns our external address the way fwknop's `-R` does: over HTTPS from `--resolve-url` or
/// fwknop's page; with `--resolve-http-only` over plain HTTP (fwknop's page, then its backup).
/// An `http://` URL without `--resolve-http-only` is fetched as it says, with a warning (as
/// fwknop warns): anyone on the path can forge a plain-HTTP answer.
pub(crate) fn resolve_external_ip(o: &ResolveOptions, warn: &mut dyn FnMut(String)) -> Result<IpAddr> {
    let agent = o.agent.as_deref().unwrap_or(USER_AGENT);
    let urls: Vec<&str> = match (&o.url, o.http_only) {
        (Some(u), _) => vec![u.as_str()],
        (None, false) => vec![RESOLVE_URL],
        (None, true) => RESOLVE_URLS_HTTP.to_vec(),
    };
    let mut last = None;
    for url in urls {
        let u = parse_url(url)?;
        if u.tls && o.http_only {
            bail!("--resolve-http-only cannot fetch an https:// URL ({url})");
        }
        if !u.tls && !o.http_only {
            warn(format!("the -R URL {url} is not https://: anyone on the path can forge the answer"));
        }
        match fetch_ip(&u, agent) {
            Ok(ip) => return Ok(ip),
            Err(e) => last = Some(e.context(format!("cannot get {url}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no resolve URL")))
}

/// One GET of `u`; the first address in the body.
fn fetch_ip(u: &Url, agent: &str) -> Result<IpAddr> {
    let addr = resolve(&u.host, u.port, false)?;
    let s =
        TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let host_header = if u.host.contains(':') { format!("[{}]", u.host) } else { u.host.clone() };
    let req = format!(
        "GET {} HTTP/1.1\r\nUser-Agent: {agent}\r\nAccept: */*\r\nHost: {host_header}\r\nConnection: close\r\n\r\n",
        u.path
    );
    let resp =
        if u.tls { crate::tls::exchange(s, &u.host, req.as_bytes())? } else { exchange(s, req.as_bytes())? };
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    // The status line is the server's text: printable ASCII only, so it cannot drive the
    // terminal or fake another line.
    let shown: String = status.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(100).collect();
    ensure!(code == "200", "HTTP request failed: {shown}");
    first_ip(body).context("no IP address in the HTTP response")
}

/// Sends `req` and reads the response on a plain stream.
fn exchange(mut s: impl Read + Write, req: &[u8]) -> Result<Vec<u8>> {
    s.write_all(req).context("cannot send the HTTP request")?;
    read_response(&mut s)
}

/// Whether `resp` holds a whole HTTP response by its `Content-Length`.
pub(crate) fn complete(resp: &[u8]) -> bool {
    let text = String::from_utf8_lossy(resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|len| body.len() >= len)
}

/// Reads one HTTP response: until the body has its `Content-Length`, or the peer closes.
pub(crate) fn read_response(s: &mut impl Read) -> Result<Vec<u8>> {
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).context("cannot read the HTTP response")?;
        if n == 0 {
            return Ok(resp);
        }
        resp.extend_from_slice(&buf[..n]);
        ensure!(resp.len() as u64 <= MAX_RESPONSE, "HTTP response over {MAX_RESPONSE} bytes");
        if complete(&resp) {
            return Ok(resp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_transport_request() {
        let r = http_request("ab+cd/ef", "gw.lan", USER_AGENT);
        assert_eq!(
            r,
            "GET /ab-cd_ef HTTP/1.1\r\nUser-Agent: Fwknop/2.6.10\r\nAccept: */*\r\nHost: gw.lan\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/ip").unwrap(),
            Url { tls: false, host: "127.0.0.1".into(), port: 8080, path: "/ip".into() }
        );
        assert_eq!(
            parse_url("HTTP://example.org").unwrap(),
            Url { tls: false, host: "example.org".into(), port: 80, path: "/".into() }
        );
        assert_eq!(
            parse_url("https://example.org/x").unwrap(),
            Url { tls: true, host: "example.org".into(), port: 443, path: "/x".into() }
        );
        assert_eq!(parse_url("http://[::1]:81/x").unwrap().host, "::1");
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://x:0/").is_err());
    }

    #[test]
    fn fwknops_resolver_pages() {
        // client/fwknop_common.h: WGET_RESOLVE_URL_SSL, HTTP_RESOLVE_HOST, HTTP_BACKUP_RESOLVE_HOST.
        assert_eq!(RESOLVE_URL, "https://www.cipherdyne.org/cgi-bin/myip");
        assert!(parse_url(RESOLVE_URL).unwrap().tls);
        assert!(RESOLVE_URLS_HTTP.iter().all(|u| !parse_url(u).unwrap().tls));
        // --resolve-http-only refuses https before any connection.
        let o = ResolveOptions { url: Some("https://127.0.0.1:9/".into()), http_only: true, agent: None };
        let e = resolve_external_ip(&o, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("--resolve-http-only"), "{e}");
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
        assert_eq!(resolve("10.0.0.1", 62201, false).unwrap(), "10.0.0.1:62201".parse().unwrap());
        assert_eq!(resolve("fd00::1", 1, false).unwrap(), "[fd00::1]:1".parse().unwrap());
        assert_eq!(resolve("[fd00::1]", 1, false).unwrap(), "[fd00::1]:1".parse().unwrap());
        // Answered locally, without a DNS query.
        let e = resolve("no-such-host.invalid", 1, false).unwrap_err();
        assert_eq!(e.to_string(), "cannot resolve destination \"no-such-host.invalid\"");
    }
}
