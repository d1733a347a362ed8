//! `letterme init`'s rules: which listeners serve TLS (from the listen address and the
//! public URL), the names the certificate is made for, and writing the new config (mode
//! 0600) with the domain key and certificate generated beside it. The binary only parses
//! the arguments and prints what this returns.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use letterme_protocol::IdentityPublicKey;

use crate::config::{Config, TlsConfig};
use crate::error::StartError;
use crate::store::Store;
use crate::tls;

/// What `letterme init` was asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub domain: String,
    /// Where the config file is written.
    pub config_path: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
    pub http_listen: Option<SocketAddr>,
    pub smtp_listen: Option<SocketAddr>,
    pub federation_listen: Option<SocketAddr>,
    pub federation_url: Option<String>,
}

/// Why `init` refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error("{} already exists; remove it or pass --config PATH", .0.display())]
    ConfigExists(PathBuf),
    #[error("--public-url {url} must be https: a server listening on {ip} serves TLS only")]
    PlainPublicUrl { url: String, ip: IpAddr },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot render the config")]
    Render(#[source] toml::ser::Error),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A freshly initialised server.
#[derive(Debug)]
pub struct Initialized {
    pub config: Config,
    pub store: Store,
    pub domain_key: IdentityPublicKey,
    /// The SPKI SHA-256 of the certificate (published in DNS).
    pub tls_fingerprint: String,
}

/// The config `init` writes: the options applied to [`Config::for_domain`], with TLS on
/// the HTTP listener when [`http_needs_tls`] says so. Validated.
pub fn config_for(opts: &InitOptions) -> Result<Config, InitError> {
    let mut config = Config::for_domain(&opts.domain);
    if let Some(d) = &opts.data_dir {
        config.data_dir.clone_from(d);
    }
    if let Some(l) = opts.http_listen {
        config.http.listen = l;
    }
    config.http.public_url.clone_from(&opts.public_url);
    if opts.smtp_listen.is_some() {
        config.smtp.listen = opts.smtp_listen;
    }
    config.federation.listen = opts.federation_listen;
    config
        .federation
        .public_url
        .clone_from(&opts.federation_url);
    if http_needs_tls(config.http.listen.ip(), config.http.public_url.as_deref())? {
        config.http.tls = Some(tls_files(&config));
    }
    config.validate().map_err(InitError::Invalid)?;
    Ok(config)
}

/// Where `init` keeps the certificate. One always exists (its fingerprint is published);
/// it is served when [`http_needs_tls`].
pub fn tls_files(config: &Config) -> TlsConfig {
    let dir = config.data_dir.join("tls");
    TlsConfig {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// The HTTP listener serves TLS when it is not on loopback or the public URL is https;
/// plain HTTP only on loopback, so a public URL for any other address must be https.
pub fn http_needs_tls(listen: IpAddr, public_url: Option<&str>) -> Result<bool, InitError> {
    let https = public_url.is_some_and(|u| u.starts_with("https://"));
    if !listen.is_loopback()
        && !https
        && let Some(u) = public_url
    {
        return Err(InitError::PlainPublicUrl {
            url: u.to_owned(),
            ip: listen,
        });
    }
    Ok(https || !listen.is_loopback())
}

/// The names the certificate is made for: the domain, the public URL's host, and the
/// listen address unless it is unspecified; each once, in that order.
pub fn cert_names(config: &Config) -> Vec<String> {
    let mut names = vec![config.domain.clone()];
    names.extend(config.http.public_url.as_deref().and_then(url_host));
    let listen = config.http.listen.ip();
    if !listen.is_unspecified() {
        names.push(listen.to_string());
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The host part of a URL like `https://host:port/path` (an IPv6 host without brackets).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// Writes a new server: refuses an existing config file, makes the certificate (unless
/// one is there), the data directory and the domain key, then writes the config.
pub async fn init(opts: &InitOptions, now: u64) -> Result<Initialized, InitError> {
    if opts.config_path.exists() {
        return Err(InitError::ConfigExists(opts.config_path.clone()));
    }
    let config = config_for(opts)?;
    let files = tls_files(&config);
    if !files.cert.exists() {
        tls::generate_self_signed(&cert_names(&config), &files.cert, &files.key)?;
    }
    let tls_fingerprint = tls::spki_fingerprint(&files.cert)?;
    let (store, key) = crate::serve::open_storage(&config, now).await?;
    let text = toml::to_string_pretty(&config).map_err(InitError::Render)?;
    write_config(
        &opts.config_path,
        &format!("# letter.me server config (see docs/OPERATIONS.md)\n{text}"),
    )
    .map_err(|source| InitError::Write {
        path: opts.config_path.clone(),
        source,
    })?;
    Ok(Initialized {
        config,
        store,
        domain_key: key.public(),
        tls_fingerprint,
    })
}

/// The config holds no secret itself but names every key file: readable by its owner only.
fn write_config(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(listen: &str, public_url: Option<&str>) -> InitOptions {
        InitOptions {
            domain: "Example.COM".into(),
            config_path: "letterme.toml".into(),
            data_dir: Some("/srv/letterme".into()),
            public_url: public_url.map(Into::into),
            http_listen: Some(listen.parse().expect("addr")),
            smtp_listen: None,
            federation_listen: None,
            federation_url: None,
        }
    }

    /// Issue 15.9: the config names every key file; only its owner reads it.
    #[cfg(unix)]
    #[test]
    fn the_config_is_written_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("letterme.toml");
        write_config(&path, "domain = \"example.com\"\n").expect("written");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn url_host_takes_the_authority_without_port_or_brackets() {
        assert_eq!(
            url_host("https://mail.example.com/").as_deref(),
            Some("mail.example.com")
        );
        assert_eq!(
            url_host("https://mail.example.com:8443/x").as_deref(),
            Some("mail.example.com")
        );
        assert_eq!(
            url_host("https://[2001:db8::1]:443").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            url_host("http://127.0.0.1:8080").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("mail.example.com"), None);
        assert_eq!(url_host("https:///path"), None);
    }

    #[test]
    fn tls_follows_the_listen_address_and_the_public_url() {
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        let public: IpAddr = "0.0.0.0".parse().expect("ip");
        assert!(!http_needs_tls(loopback, None).expect("ok"));
        assert!(!http_needs_tls(loopback, Some("http://127.0.0.1:8080")).expect("ok"));
        assert!(http_needs_tls(loopback, Some("https://mail.example.com")).expect("ok"));
        assert!(http_needs_tls(public, None).expect("ok"));
        assert!(http_needs_tls(public, Some("https://mail.example.com")).expect("ok"));
        assert_eq!(
            http_needs_tls(public, Some("http://mail.example.com"))
                .expect_err("plain on a public address")
                .to_string(),
            "--public-url http://mail.example.com must be https: a server listening on 0.0.0.0 serves TLS only"
        );
        let config = config_for(&opts("0.0.0.0:443", None)).expect("config");
        assert_eq!(
            config.http.tls.as_ref().map(|t| t.cert.clone()),
            Some(PathBuf::from("/srv/letterme/tls/cert.pem"))
        );
        assert!(
            config_for(&opts("127.0.0.1:8080", None))
                .expect("config")
                .http
                .tls
                .is_none()
        );
    }

    #[test]
    fn the_certificate_names_the_domain_the_url_host_and_a_specified_listen_address() {
        let named = |listen: &str, url: Option<&str>| {
            cert_names(&config_for(&opts(listen, url)).expect("config"))
        };
        assert_eq!(
            named("192.0.2.7:443", Some("https://mail.example.com")),
            ["example.com", "mail.example.com", "192.0.2.7"]
        );
        assert_eq!(
            named("0.0.0.0:443", Some("https://example.com")),
            ["example.com"]
        );
        assert_eq!(named("127.0.0.1:8080", None), ["example.com", "127.0.0.1"]);
    }

    #[test]
    fn an_existing_config_is_never_overwritten() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("letterme.toml");
        std::fs::write(&path, "keep").expect("write");
        let mut o = opts("127.0.0.1:0", None);
        o.config_path = path.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let err = rt.block_on(init(&o, 0)).expect_err("refused");
        assert!(matches!(err, InitError::ConfigExists(_)));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "keep");
    }
}
