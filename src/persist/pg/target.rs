//! DATABASE_URL: parsed by tokio-postgres' own `Config` (every form libpq documents:
//! `postgres://` and `postgresql://` URLs, with or without a host, `host=/socket/dir`
//! and percent-encoded socket paths, several hosts, `sslmode`, `application_name`,
//! `connect_timeout`, and the key/value form `host=… dbname=… user=…`).
//!
//! The raw value is never printed: what logs, errors and /health show is rebuilt from
//! the parsed `Config` without its password ([`PgTarget::redacted`]), and a value that
//! does not parse is described by a reason that quotes none of it.

use std::path::Path;
use std::time::Duration;
use tokio_postgres::config::{Host, SslMode};

/// How long a connection attempt may take when DATABASE_URL does not say
/// (`connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where libpq looks for the server's socket when no host is given: Debian's and
/// upstream's defaults; the first holding the port's socket, else the first that exists.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// libpq options tokio-postgres does not take; named in the refusal (a keyword
/// outside this list is not echoed: it could be a mistyped password).
const UNSUPPORTED_LIBPQ: [&str; 14] = [
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "sslcompression",
    "passfile",
    "service",
    "gssencmode",
    "krbsrvname",
    "requirepeer",
    "requiressl",
    "fallback_application_name",
    "client_encoding",
];

/// What DATABASE_URL accepts, for the exit-2 message.
pub const EXPECTED_FORMS: &str = "a libpq connection string: postgres://user:pass@host:port/db (or postgresql://), \
     postgresql:///db?host=/var/run/postgresql for a Unix socket, several hosts as host1:5432,host2:5432, \
     or the key/value form host=… port=… dbname=… user=… password=…; \
     with sslmode=disable|prefer|require|verify-ca|verify-full (a password holding @ must be percent-encoded as %40)";

/// A validated DATABASE_URL. Its password never shows: Debug and
/// [`PgTarget::redacted`] describe it from the parsed fields, without the password.
#[derive(Clone)]
pub struct PgTarget {
    pub(super) config: tokio_postgres::Config,
    pub(super) verify_certs: bool,
    redacted: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl PgTarget {
    /// Parses DATABASE_URL. `sslmode` is libpq's: `disable`, `allow` and `prefer` (the
    /// default: TLS when the server offers it), `require` (TLS, certificate not
    /// checked, as libpq and Heroku do), `verify-ca` and `verify-full` (TLS with the
    /// certificate checked against the web PKI roots). The error is a reason that
    /// quotes nothing of `url`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        // tokio-postgres knows disable|prefer|require; the rest map onto them.
        let mut verify_certs = false;
        let mut text = url.to_owned();
        for (from, to, verify) in [
            ("sslmode=verify-full", "sslmode=require", true),
            ("sslmode=verify-ca", "sslmode=require", true),
            ("sslmode='verify-full'", "sslmode=require", true),
            ("sslmode='verify-ca'", "sslmode=require", true),
            ("sslmode=allow", "sslmode=prefer", false),
            ("sslmode='allow'", "sslmode=prefer", false),
        ] {
            if text.contains(from) {
                text = text.replace(from, to);
                verify_certs |= verify;
            }
        }
        let scheme = url.split_once("://").map(|(s, _)| s);
        if let Some(s) = scheme
            && !s.eq_ignore_ascii_case("postgres")
            && !s.eq_ignore_ascii_case("postgresql")
        {
            return Err("a postgres:// or postgresql:// URL (another scheme was given)".into());
        }
        if scheme.is_none() && !text.contains('=') {
            return Err(
                "a URL or key=value pairs (the value is neither; check for a missing // after postgres:)"
                    .into(),
            );
        }
        let mut config: tokio_postgres::Config = text
            .parse()
            .map_err(|e: tokio_postgres::Error| safe_reason(&e))?;
        for h in config.get_hosts() {
            if let Host::Tcp(h) = h
                && (h.is_empty()
                    || !h
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(c)))
            {
                return Err(
                    "host names of letters, digits, dots and dashes (a password holding @ must be percent-encoded as %40)"
                        .into(),
                );
            }
        }
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            // The directory where the server's socket is, else the first that exists.
            let port = config.get_ports().first().copied().unwrap_or(5432);
            let dir = DEFAULT_SOCKET_DIRS
                .iter()
                .find(|d| Path::new(d).join(format!(".s.PGSQL.{port}")).exists())
                .or_else(|| DEFAULT_SOCKET_DIRS.iter().find(|d| Path::new(d).is_dir()))
                .unwrap_or(&DEFAULT_SOCKET_DIRS[1]);
            config.host_path(dir);
        }
        if config.get_user().is_none_or(str::is_empty) {
            // libpq's default: the operating system user.
            match os_user() {
                Some(u) => {
                    config.user(&u);
                }
                None => return Err("a user name (none given, and no OS user found)".into()),
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("genosdb-fallback");
        }
        config.keepalives_idle(Duration::from_secs(30));
        let redacted = describe(&config, verify_certs);
        Ok(Self {
            config,
            verify_certs,
            redacted,
        })
    }

    /// DATABASE_URL rebuilt from its parsed fields, the password as `***`:
    /// `postgres://user:***@host:port/db?sslmode=…`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

fn os_user() -> Option<String> {
    for var in ["PGUSER", "USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return Some(u);
        }
    }
    None
}

/// The target as a URL built from the parsed fields; the password is never among them.
fn describe(c: &tokio_postgres::Config, verify: bool) -> String {
    let ports = c.get_ports();
    let port = |i: usize| {
        ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(5432)
    };
    let mut tcp = Vec::new();
    let mut sockets = Vec::new();
    for (i, h) in c.get_hosts().iter().enumerate() {
        match h {
            Host::Tcp(h) => tcp.push(format!("{h}:{}", port(i))),
            Host::Unix(p) => sockets.push(format!("{}:{}", p.display(), port(i))),
        }
    }
    for (i, a) in c.get_hostaddrs().iter().enumerate() {
        if c.get_hosts().is_empty() {
            tcp.push(format!("{a}:{}", port(i)));
        }
    }
    let mut out = String::from("postgres://");
    if let Some(u) = c.get_user() {
        out.push_str(u);
        if c.get_password().is_some() {
            out.push_str(":***");
        }
        out.push('@');
    }
    out.push_str(&tcp.join(","));
    out.push('/');
    out.push_str(c.get_dbname().unwrap_or(""));
    let mut params = Vec::new();
    for s in sockets {
        params.push(format!("host={s}"));
    }
    let mode = match (c.get_ssl_mode(), verify) {
        (SslMode::Disable, _) => "disable",
        (SslMode::Require, true) => "verify-full",
        (SslMode::Require, false) => "require",
        _ => "prefer",
    };
    params.push(format!("sslmode={mode}"));
    out.push('?');
    out.push_str(&params.join("&"));
    out
}

/// tokio-postgres' parse error, reworded so that it quotes nothing of the value: its
/// "unknown option" names whatever stood before an `=` (a password, after a typo),
/// and its "unexpected character" quotes one.
fn safe_reason(e: &tokio_postgres::Error) -> String {
    let inner = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    if let Some(rest) = inner.strip_prefix("invalid value for option `") {
        let name = rest.trim_end_matches('`');
        return format!("a valid value for {name}");
    }
    if let Some(rest) = inner.strip_prefix("unknown option `") {
        let name = rest.trim_end_matches('`');
        if let Some(known) = UNSUPPORTED_LIBPQ.iter().find(|k| **k == name) {
            return format!("options tokio-postgres supports ({known} is not one of them)");
        }
        return "only known options (one is not; it is not shown in case it holds a secret)".into();
    }
    if let Some(rest) = inner.strip_prefix("unexpected character at byte ") {
        let at = rest.split(':').next().unwrap_or("?");
        return format!("key=value pairs (malformed at byte {at})");
    }
    if inner.contains("utf-8") || inner.contains("utf8") {
        return "valid UTF-8 after percent-decoding".into();
    }
    match inner.as_str() {
        "unexpected EOF" => "key=value pairs (one has no value)".into(),
        "unterminated quoted connection parameter value" => {
            "key=value pairs (a quoted value is not closed)".into()
        }
        "unterminated parameter" => "key=value URL parameters (one has no =)".into(),
        _ => "a well-formed connection string".into(),
    }
}

pub(super) mod tls {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::sync::Arc;

    /// libpq's `sslmode=require`: the channel is encrypted and its handshake checked,
    /// but the certificate is not matched against a root (Heroku Postgres uses
    /// certificates no public root signs).
    #[derive(Debug)]
    struct EncryptOnly(Arc<CryptoProvider>);

    impl ServerCertVerifier for EncryptOnly {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn connector(verify: bool) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let config = if verify {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth()
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "PG/S3CRET?x#y";

    #[test]
    fn every_form_parses_and_never_shows_the_password() {
        for url in [
            format!("postgres://u:{SECRET}@db.example:5433/d?sslmode=require"),
            format!("postgresql://u:{SECRET}@db.example/d"),
            "postgresql://u:PG%2FS3CRET%3Fx%23y@db.example/d".to_owned(),
            "postgresql:///d?host=/var/run/postgresql&user=u".to_owned(),
            "postgresql://u@%2Fvar%2Frun%2Fpostgresql/d".to_owned(),
            "postgresql:///d?user=u".to_owned(),
            format!(
                "postgres://u:{SECRET}@h1:5432,h2:5433/d?application_name=app&connect_timeout=3"
            ),
            format!(
                "host=db.example port=5432 user=u password='{SECRET}' dbname=d sslmode=verify-full"
            ),
            "host=/tmp user=u dbname=d".to_owned(),
        ] {
            let t = PgTarget::parse(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
            for shown in [t.redacted().to_owned(), format!("{t:?}")] {
                assert!(!shown.contains("S3CRET"), "{shown}");
                assert!(!shown.contains("%2FS3"), "{shown}");
            }
        }
        let t = PgTarget::parse("postgresql:///d?host=/var/run/postgresql&user=u").unwrap();
        assert_eq!(
            t.redacted(),
            "postgres://u@/d?host=/var/run/postgresql:5432&sslmode=prefer"
        );
        let t = PgTarget::parse(&format!("postgres://u:{SECRET}@h1,h2:5433/d")).unwrap();
        assert!(
            t.redacted().starts_with("postgres://u:***@h1:"),
            "{}",
            t.redacted()
        );
        assert!(
            PgTarget::parse("postgresql://u:p@db.example/d?sslmode=verify-full")
                .unwrap()
                .verify_certs
        );
        assert!(
            !PgTarget::parse("postgresql://u:p@db.example/d?sslmode=require")
                .unwrap()
                .verify_certs
        );
        let t = PgTarget::parse("postgres://u:p@h/d?application_name=mine").unwrap();
        assert_eq!(t.config.get_application_name(), Some("mine"));
    }

    #[test]
    fn refusals_quote_nothing_of_the_value() {
        for bad in [
            format!("mysql://u:{SECRET}@h/d"),
            format!("postgres://u:{SECRET}@h/d?sslmode=maybe"),
            format!("postgres:/u:{SECRET}@h/d"),
            format!("u:{SECRET}@h/d"),
            format!("host=h user=u password={SECRET} sslmode=maybe"),
            format!("host=h user=u password='{SECRET}"),
            "host=h S3CRET=x".to_owned(),
            "host=h password S3CRET".to_owned(),
            format!("postgres://u:hun@{SECRET}@h/d"),
            format!("postgres://u:{SECRET}@h/d?S3CRET=1"),
        ] {
            let why = PgTarget::parse(&bad).map(|_| ()).unwrap_err();
            assert!(!why.contains("S3CRET"), "{bad}: {why}");
            assert!(!why.contains("hun"), "{bad}: {why}");
        }
        let why = PgTarget::parse("postgres://u:p@h/d?sslrootcert=/x").unwrap_err();
        assert!(why.contains("sslrootcert"), "{why}");
    }
}
