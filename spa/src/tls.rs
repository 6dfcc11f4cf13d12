//! HTTPS for `-R`: one request over TLS (rustls with the ring provider, as the workspace's Redis
//! client uses), so that nobody on the path can forge the address we ask the server to let in.
//!
//! Trust: the operating system's certificate store (`rustls-native-certs`: on Linux and the BSDs
//! the files OpenSSL would read, on macOS the keychain, on Windows the system store), the same
//! trust wget (fwknop's fetcher) has. `SSL_CERT_FILE` (a PEM bundle) or `SSL_CERT_DIR` replaces
//! the system store, as with OpenSSL, e.g. for a private resolver's CA. The name checked is the
//! URL's host (a name or an IP address).

use std::net::TcpStream;

use anyhow::Result;

/// Sends `req` over TLS on `tcp` to `host` and reads the HTTP response.
#[cfg(feature = "https")]
pub(crate) fn exchange(tcp: TcpStream, host: &str, req: &[u8]) -> Result<Vec<u8>> {
    use std::io::{ErrorKind, Read as _, Write as _};
    use std::sync::Arc;

    use anyhow::{Context as _, ensure};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    ensure!(
        added > 0,
        "no trusted certificate authorities found (the system store, or SSL_CERT_FILE / SSL_CERT_DIR)"
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        ServerName::try_from(host.to_owned()).with_context(|| format!("invalid TLS server name {host:?}"))?;
    let conn = ClientConnection::new(Arc::new(config), name).context("cannot set up TLS")?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(req).and_then(|()| tls.flush()).context("TLS")?;
    // A peer that closes without TLS's close_notify could have had the answer cut short by
    // someone on the path: only a complete answer (its Content-Length) is taken then.
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return Ok(resp),
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                ensure!(
                    resp.len() as u64 <= crate::net::MAX_RESPONSE,
                    "HTTP response over {} bytes",
                    crate::net::MAX_RESPONSE
                );
                if crate::net::complete(&resp) {
                    return Ok(resp);
                }
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                anyhow::bail!(
                    "the server closed the TLS connection without close_notify before the answer was complete"
                )
            }
            Err(e) => return Err(e).context("TLS"),
        }
    }
}

/// Without the `https` feature (a build for a system where ring's C code cannot be compiled):
/// `-R` works over plain HTTP only.
#[cfg(not(feature = "https"))]
pub(crate) fn exchange(_tcp: TcpStream, _host: &str, _req: &[u8]) -> Result<Vec<u8>> {
    anyhow::bail!("this spa was built without HTTPS (cargo feature `https`); use --resolve-http-only or -a")
}
