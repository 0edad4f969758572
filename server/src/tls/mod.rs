//! TLS termination (RFC 8446, RFC 5246) with rustls: the daemon's listener speaks TLS when
//! `SWITCHYARD_TLS_CERT` is set, and everything above it (HTTP/1.1, the switch, every
//! plugin that reads through the daemon) sees plaintext.
//!
//! - [`certs`]: the certificate chains and keys, checked when read and chosen by SNI.
//! - [`layer`]: one session over one socket, for an event loop or a worker.
//!
//! TLS 1.2 and 1.3 only, with rustls's safe defaults (no renegotiation, no compression,
//! AEAD ciphers with forward secrecy). ALPN offers `h2` when a plugin serves HTTP/2 (RFC
//! 9113 §3.2: such a connection starts with the preface, no upgrade) and `http/1.1`.
//! Certificates are read again on SIGHUP: new handshakes use the new ones, sessions
//! already established keep theirs, and a set that does not load leaves the old one in
//! service.

pub mod certs;
pub mod layer;

use certs::{PairPaths, Store, Warnings};
use layer::{FlightLimit, TlsLayer};
use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// The ALPN protocol id of HTTP/2 over TLS (RFC 9113 §3.2).
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol id of HTTP/1.1 (RFC 7301 §6).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Client certificates: verified against the authorities in `ca` when a client presents
/// one; with `required`, a client that presents none is refused in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub ca: PathBuf,
    pub required: bool,
}

/// What ALPN offers (RFC 7301), in our order: the client's offer is taken in ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 before HTTP/1.1: gRPC and browsers alike speak HTTP/2 to the h2c plugin.
    H2First,
    /// HTTP/1.1 before HTTP/2: a client that offers both (a browser) speaks HTTP/1.1, to
    /// the daemon's own pages and WebSockets; one that offers only `h2` (gRPC) gets it.
    Http1First,
    /// No plugin serves HTTP/2.
    Http1,
}

/// The daemon's TLS side: the configuration new handshakes start from, replaced whole on a
/// reload.
pub struct Tls {
    paths: Vec<PairPaths>,
    clients: Option<ClientAuth>,
    provider: Arc<CryptoProvider>,
    alpn: Vec<Vec<u8>>,
    config: RwLock<Built>,
}

/// The cryptography rustls runs on: aws-lc-rs (the `aws-lc-rs` feature, on by default), or
/// *ring* without it. Measured against nginx on one core (bench/RESULTS.md), aws-lc-rs
/// signs RSA 2048 handshakes 1.4x as fast as *ring*, and both are ahead with ECDSA P-256.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(not(feature = "aws-lc-rs"))]
    return Arc::new(rustls::crypto::ring::default_provider());
}

impl Tls {
    /// Reads and checks the pairs (and the client CA); `alpn` is what ALPN offers, in our
    /// order of preference (the client's offer is taken in ours).
    pub fn load(
        paths: Vec<PairPaths>,
        clients: Option<ClientAuth>,
        alpn: Alpn,
    ) -> Result<(Tls, Warnings), String> {
        let provider = provider();
        let alpn = match alpn {
            Alpn::H2First => vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()],
            Alpn::Http1First => vec![ALPN_HTTP1.to_vec(), ALPN_H2.to_vec()],
            Alpn::Http1 => vec![ALPN_HTTP1.to_vec()],
        };
        let (built, warnings) = build(&paths, clients.as_ref(), &provider, &alpn)?;
        let tls = Tls {
            paths,
            clients,
            provider,
            alpn,
            config: RwLock::new(built),
        };
        Ok((tls, warnings))
    }

    /// Reads the same files again. On success new handshakes use them; on an error the
    /// pairs in service stay, and the error says why.
    pub fn reload(&self) -> Result<Warnings, String> {
        let (built, warnings) = build(
            &self.paths,
            self.clients.as_ref(),
            &self.provider,
            &self.alpn,
        )?;
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = built;
        Ok(warnings)
    }

    /// A new server-side session, for a connection just accepted.
    pub fn accept(&self) -> io::Result<TlsLayer> {
        let config = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone();
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        let limit = match self.clients {
            None => FlightLimit::SERVER_ONLY,
            Some(_) => FlightLimit::CLIENT_CERTIFICATES,
        };
        Ok(TlsLayer::new(conn, limit))
    }

    /// The pairs in service, one line each, for `--check` and the start's log line.
    pub fn describe(&self) -> Vec<String> {
        self.current().1.clone()
    }

    /// The certificates in service, for `/metrics`: when each expires, so that an
    /// operator can alert before it does (the start and reloads warn 14 days ahead).
    pub fn render_metrics(&self) -> String {
        let name = "switchyard_tls_certificate_expiry_timestamp_seconds";
        let mut out = format!(
            "# HELP {name} When each certificate in service expires (Unix time), by file.\n# TYPE {name} gauge\n"
        );
        for (file, not_after) in self.current().2.iter() {
            let seconds = not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let file = file.replace('\\', "\\\\").replace('"', "\\\"");
            out.push_str(&format!("{name}{{file=\"{file}\"}} {seconds}\n"));
        }
        out
    }

    fn current(&self) -> Built {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A configuration for new handshakes, the pairs it serves in words, and each pair's
/// certificate file with its expiry.
type Built = (
    Arc<ServerConfig>,
    Vec<String>,
    Arc<Vec<(String, SystemTime)>>,
);

fn build(
    paths: &[PairPaths],
    clients: Option<&ClientAuth>,
    provider: &Arc<CryptoProvider>,
    alpn: &[Vec<u8>],
) -> Result<(Built, Warnings), String> {
    let (store, warnings) = Store::load(paths, provider, SystemTime::now())?;
    let summary = store.pairs.iter().enumerate().map(|(at, pair)| {
        let names = match pair.names.is_empty() {
            true => "no DNS name".to_string(),
            false => pair.names.join(", "),
        };
        let default = if at == 0 { ", the default" } else { "" };
        let expires = httpdate::fmt_http_date(pair.not_after);
        format!(
            "{} for {names}{default} (expires {expires})",
            pair.paths.cert.display()
        )
    });
    let summary = summary.collect();
    let expiry = store
        .pairs
        .iter()
        .map(|pair| (pair.paths.cert.display().to_string(), pair.not_after))
        .collect();
    let config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS settings refused by rustls: {e}"))?;
    let config = match clients {
        None => config.with_no_client_auth(),
        Some(clients) => config.with_client_cert_verifier(client_verifier(clients, provider)?),
    };
    let mut config = config.with_cert_resolver(Arc::new(store));
    config.alpn_protocols = alpn.to_vec();
    Ok(((Arc::new(config), summary, Arc::new(expiry)), warnings))
}

/// Verifies client certificates against the authorities in `clients.ca` (RFC 5280 path
/// validation, by webpki).
fn client_verifier(
    clients: &ClientAuth,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    use rustls::pki_types::pem::PemObject;
    let file = clients.ca.display();
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&clients.ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!("{file}: cannot read certificates ({e}) (SWITCHYARD_TLS_CLIENT_CA)")
        })?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{file}: a certificate is not a usable authority ({e})"))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{file}: no certificate in it (SWITCHYARD_TLS_CLIENT_CA)"
        ));
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    let builder = match clients.required {
        true => builder,
        false => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map_err(|e| format!("{file}: client certificates cannot be verified with it ({e})"))
}

/// What a finished handshake settled, in the words `/metrics` and the access line use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Summary {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The IANA name of the cipher suite.
    pub cipher: &'static str,
    /// `h2`, `http/1.1`, or `-` when the client offered no protocol.
    pub alpn: &'static str,
}

impl Summary {
    pub fn of(session: &rustls::ServerConnection) -> Option<Summary> {
        if session.is_handshaking() {
            return None;
        }
        let version = match session.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "other",
        };
        let cipher = session
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("other");
        let alpn = match session.alpn_protocol() {
            Some(ALPN_H2) => "h2",
            Some(ALPN_HTTP1) => "http/1.1",
            Some(_) => "other",
            None => "-",
        };
        Some(Summary {
            version,
            cipher,
            alpn,
        })
    }
}

/// What plugins and the access line are told of a TLS connection's session.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub summary: Summary,
    /// The name the client asked for (SNI), lower case.
    pub server_name: Option<String>,
    /// The subject of the client's certificate, verified against
    /// `SWITCHYARD_TLS_CLIENT_CA` (the handshake fails otherwise): RFC 4514's string form.
    pub client_subject: Option<String>,
}

impl Handshake {
    pub fn of(layer: &TlsLayer) -> Option<Handshake> {
        let session = layer.session();
        let client_subject = session.peer_certificates().and_then(|chain| {
            let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
            Some(rfc4514(cert.subject()))
        });
        Some(Handshake {
            summary: layer.summary()?,
            server_name: session.server_name().map(str::to_ascii_lowercase),
            client_subject,
        })
    }
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,` between them,
/// `+` within one, special characters escaped (as Apache's `SSL_CLIENT_S_DN` and nginx's
/// `$ssl_client_s_dn` give it).
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let oid = attribute.attr_type();
                    let kind = x509_parser::objects::oid2abbrev(oid, registry)
                        .map(str::to_string)
                        .unwrap_or_else(|_| oid.to_id_string());
                    let value = attribute.as_str().map(escape_dn_value).unwrap_or_else(|_| {
                        let hex: String = attribute
                            .attr_value()
                            .data
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        format!("#{hex}")
                    });
                    format!("{kind}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 4514 §2.4: `"+,;<>\` and NUL escaped anywhere, a leading space or `#` and a
/// trailing space too.
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (at, c) in value.chars().enumerate() {
        let edge = (at == 0 && (c == ' ' || c == '#')) || (at == last && c == ' ');
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            _ if edge => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Why a handshake failed, as a `/metrics` label: what the operator can act on.
pub fn failure_reason(error: &io::Error) -> &'static str {
    use rustls::Error;
    if error
        .get_ref()
        .is_some_and(|e| e.is::<layer::HandshakeTooLarge>())
    {
        return "too_large";
    }
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => "closed",
            _ => "io",
        };
    };
    match tls {
        // Bytes that are not TLS at all: plain HTTP sent to a TLS port, scanners.
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "not_tls",
        // No version, cipher suite, group or signature scheme in common.
        Error::PeerIncompatible(_) => "incompatible",
        Error::NoApplicationProtocol => "no_alpn",
        // The client refused us, mostly our certificate (unknown CA, wrong name, expired).
        Error::AlertReceived(_) => "client_alert",
        Error::InvalidCertificate(_) | Error::NoCertificatesPresented => "client_certificate",
        _ => "protocol",
    }
}
