//! Certificates and their keys: read from PEM files, checked, and chosen for each handshake
//! by the name the client asked for (SNI, RFC 6066 §3).
//!
//! Checked when read, so that `--check`, the start and a reload refuse the same mistakes
//! with the file's name and the fix: a key that is not the certificate's, a chain out of
//! order (each certificate must be followed by its issuer's: RFC 8446 §4.4.2 lets clients
//! insist), and dates (an expired certificate is refused; one expiring within
//! [`EXPIRY_WARNING`] is served with a warning).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate this close to its end is served, with a warning at start and reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Where one certificate chain and its key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One certificate chain with its key, ready for handshakes.
#[derive(Debug)]
pub struct Pair {
    pub paths: PairPaths,
    pub certified: Arc<CertifiedKey>,
    /// The DNS names it is valid for (its subjectAltName), lower case; `*.` for wildcards.
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

/// What reading a pair found worth saying that does not stop it being served.
pub type Warnings = Vec<String>;

impl Pair {
    /// Reads and checks one pair. The error names the file and what is wrong with it.
    pub fn load(
        paths: &PairPaths,
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<(Pair, Warnings), String> {
        let cert_file = paths.cert.display();
        let key_file = paths.key.display();
        let chain = read_chain(&paths.cert)?;
        let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| {
            format!("{key_file}: no private key read ({e}); expected PEM (PKCS#8, PKCS#1 or SEC1)")
        })?;
        let certified = CertifiedKey::from_der(chain.clone(), key, provider).map_err(|e| {
            format!("{key_file} is not the key of {cert_file} ({e}); give the key the certificate was issued for")
        })?;
        let mut warnings = Vec::new();
        let leaf = parse(&chain[0], &cert_file, 1)?;
        let names = dns_names(&leaf);
        if names.is_empty() {
            warnings.push(format!(
                "{cert_file}: no DNS name in subjectAltName; clients that check names will refuse it"
            ));
        }
        let not_after = time_of(leaf.validity().not_after);
        let not_before = time_of(leaf.validity().not_before);
        if now >= not_after {
            return Err(format!(
                "{cert_file}: expired on {}; renew it",
                httpdate::fmt_http_date(not_after)
            ));
        }
        if now < not_before {
            return Err(format!(
                "{cert_file}: not valid before {}; check the clock or the certificate",
                httpdate::fmt_http_date(not_before)
            ));
        }
        if not_after.duration_since(now).unwrap_or_default() < EXPIRY_WARNING {
            warnings.push(format!(
                "{cert_file}: expires on {}",
                httpdate::fmt_http_date(not_after)
            ));
        }
        check_order(&chain, &cert_file)?;
        for (at, der) in chain.iter().enumerate().skip(1) {
            let issuer = parse(der, &cert_file, at + 1)?;
            let until = time_of(issuer.validity().not_after);
            if now >= until {
                return Err(format!(
                    "{cert_file}: certificate {} of the chain ({}) expired on {}; get the \
                     issuer's current certificate",
                    at + 1,
                    issuer.subject(),
                    httpdate::fmt_http_date(until)
                ));
            }
        }
        let pair = Pair {
            paths: paths.clone(),
            certified: Arc::new(certified),
            names,
            not_after,
        };
        Ok((pair, warnings))
    }

    /// Whether this certificate is valid for `name` (lower case): exactly, or by a
    /// wildcard covering its first label (RFC 6125 §6.4.3).
    fn serves(&self, name: &str) -> bool {
        self.names.iter().any(|own| match own.strip_prefix("*.") {
            Some(parent) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => own == name,
        })
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = path.display();
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{file}: cannot read certificates ({e})"))?;
    if chain.is_empty() {
        return Err(format!(
            "{file}: no certificate in it; expected PEM (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(chain)
}

fn parse<'a>(
    der: &'a CertificateDer<'_>,
    file: &impl std::fmt::Display,
    number: usize,
) -> Result<x509_parser::certificate::X509Certificate<'a>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| format!("{file}: certificate {number} cannot be parsed ({e})"))
}

/// Each certificate must be followed by its issuer's (the root may be left out).
fn check_order(chain: &[CertificateDer<'_>], file: &impl std::fmt::Display) -> Result<(), String> {
    for (at, pair) in chain.windows(2).enumerate() {
        let (cert, next) = (
            parse(&pair[0], file, at + 1)?,
            parse(&pair[1], file, at + 2)?,
        );
        if cert.issuer() != next.subject() {
            return Err(format!(
                "{file}: certificate {} is not the issuer of certificate {} (issuer {}, but next comes {}); \
                 put the server's certificate first, then each issuer in turn",
                at + 2,
                at + 1,
                cert.issuer(),
                next.subject()
            ));
        }
    }
    Ok(())
}

fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn time_of(time: x509_parser::time::ASN1Time) -> SystemTime {
    let seconds = time.timestamp();
    match u64::try_from(seconds) {
        Ok(after) => UNIX_EPOCH + Duration::from_secs(after),
        Err(_) => UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs()),
    }
}

/// The pairs served: the first for clients that name no host (or one no pair serves), as
/// a default server does.
#[derive(Debug)]
pub struct Store {
    pub pairs: Vec<Pair>,
}

impl Store {
    /// Reads every pair; the first error stops it. Warnings are returned for the caller
    /// to log (or for `--check` to print).
    pub fn load(
        paths: &[PairPaths],
        provider: &CryptoProvider,
        now: SystemTime,
    ) -> Result<(Store, Warnings), String> {
        let mut pairs = Vec::with_capacity(paths.len());
        let mut warnings = Vec::new();
        for pair_paths in paths {
            let (pair, mut said) = Pair::load(pair_paths, provider, now)?;
            pairs.push(pair);
            warnings.append(&mut said);
        }
        Ok((Store { pairs }, warnings))
    }

    /// The pair for a handshake that asked for `name` and can check `schemes`' signatures:
    /// of the pairs for that name, the first whose key the client can check (an ECDSA and
    /// an RSA pair for one name serve old and new clients alike), else the first for that
    /// name; no pair for it, the default.
    pub fn choose(&self, name: Option<&str>, schemes: &[SignatureScheme]) -> Option<&Pair> {
        let asked = name.map(str::to_ascii_lowercase);
        let named = || {
            let asked = asked.as_deref()?;
            let mut serving = self.pairs.iter().filter(|pair| pair.serves(asked));
            let first = serving.clone().next()?;
            let checkable =
                serving.find(|pair| pair.certified.key.choose_scheme(schemes).is_some());
            Some(checkable.unwrap_or(first))
        };
        named().or(self.pairs.first())
    }
}

impl ResolvesServerCert for Store {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name(), hello.signature_schemes())
            .map(|pair| pair.certified.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair_for(names: &[&str]) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let certified = CertifiedKey::from_der(vec![cert.der().clone()], der, &provider).unwrap();
        Pair {
            paths: PairPaths {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            certified: Arc::new(certified),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_after: SystemTime::now(),
        }
    }

    #[test]
    fn the_name_asked_picks_the_pair_and_the_first_is_the_default() {
        let store = Store {
            pairs: vec![pair_for(&["a.test"]), pair_for(&["*.b.test", "b.test"])],
        };
        let any = [SignatureScheme::ECDSA_NISTP256_SHA256];
        let names = |asked| store.choose(asked, &any).unwrap().names[0].clone();
        assert_eq!(names(Some("A.TEST")), "a.test");
        assert_eq!(names(Some("www.b.test")), "*.b.test");
        assert_eq!(names(Some("b.test")), "*.b.test");
        // A wildcard covers one label only, and never the empty one.
        assert_eq!(names(Some("x.www.b.test")), "a.test");
        assert_eq!(names(Some(".b.test")), "a.test");
        assert_eq!(names(None), "a.test");
    }
}
