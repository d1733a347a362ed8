//! The operator's commands: init, serve, dns, check, domain-key, queue. Each loads the
//! config, calls the server library (and the server-side adapters for `serve`) and hands
//! the result to [`crate::output`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use letterme_server::init::InitOptions;
use letterme_server::records;
use letterme_server::{Config, SystemClock};

use crate::cli;
use crate::output;

/// Loads the config: the given file, else ./letterme.toml, else the embedded default.
fn load_config(path: Option<&Path>) -> Result<Config> {
    let (path, required) = match path {
        Some(p) => (p.to_owned(), true),
        None => (PathBuf::from("letterme.toml"), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let config: Config = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {}",
                    path.display(),
                    e.to_string().trim().replace('\n', " ")
                )
            })?;
            Ok(config)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            tracing::info!(
                "no letterme.toml here; running on the embedded default (domain localhost)"
            );
            Ok(Config::embedded_default())
        }
        Err(e) => bail!("cannot read the config file {}: {e}", path.display()),
    }
}

/// Opens the database of a server that is not running.
fn open_store(config: &Config) -> Result<letterme_server::store::Store> {
    letterme_server::store::Store::open(&config.database_path())
        .with_context(|| format!("cannot open {}", config.database_path().display()))
}

/// `letterme init`.
pub async fn init(args: &cli::InitArgs) -> Result<()> {
    let opts = InitOptions {
        domain: args.domain.clone(),
        config_path: args.config.clone(),
        data_dir: args.data.clone(),
        public_url: args.public_url.clone(),
        http_listen: args.http_listen,
        smtp_listen: args.smtp_listen,
        federation_listen: args.federation_listen,
        federation_url: args.federation_url.clone(),
    };
    let init = letterme_server::init::init(&opts, letterme_client::now()).await?;
    output::initialized(&args.config, &init);
    let inputs = record_inputs(&init.config, &init.store).await?;
    output::init_records(&args.config, &init.config, &inputs);
    Ok(())
}

/// `letterme dns`: the records to publish, with the real keys, endpoint and TLS key.
pub async fn dns(config_path: &Path) -> Result<()> {
    let config = load_config(Some(config_path))?.normalized();
    let store = open_store(&config)?;
    let inputs = record_inputs(&config, &store).await?;
    output::zone(&config, &inputs);
    Ok(())
}

/// `letterme check`: every record resolved live and judged.
pub async fn check(config_path: &Path, json: bool) -> Result<()> {
    let config = load_config(Some(config_path))?.normalized();
    let store = open_store(&config)?;
    let (verdicts, dnssec) = check_records(&config, &store).await?;
    let failing: Vec<String> = verdicts
        .iter()
        .filter(|v| v.fails())
        .map(|v| format!("{} {}", v.rtype, v.name))
        .collect();
    output::check(&config, &verdicts, &dnssec, failing.is_empty(), json);
    if failing.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} required record(s) missing or wrong: {}",
            failing.len(),
            failing.join(", ")
        )
    }
}

/// Resolves the records on the configured nameservers and judges them; also says whether
/// the answers were DNSSEC-validated.
async fn check_records(
    config: &Config,
    store: &letterme_server::store::Store,
) -> Result<(Vec<records::Verdict>, String)> {
    let inputs = record_inputs(config, store).await?;
    let expected = records::expected(config, &inputs);
    let dns = mail_dns(config)?;
    let verdicts = records::check(&dns, &expected).await;
    let dnssec = records::dnssec_status(&config.dns.nameservers, &config.domain).await;
    Ok((verdicts, dnssec))
}

fn mail_dns(config: &Config) -> Result<letterme_server::dns::HickoryMailDns> {
    letterme_server::dns::HickoryMailDns::new(
        &config.dns.nameservers,
        std::time::Duration::from_millis(config.dns.timeout_ms),
        config.dns.attempts,
    )
    .map_err(|e| anyhow::anyhow!("DNS: {e}"))
}

/// What the records are made of: the DKIM keys (generated on first use) and, with
/// federation on, one `_mailx` record per published domain key.
async fn record_inputs(
    config: &Config,
    store: &letterme_server::store::Store,
) -> Result<records::Inputs> {
    let now = letterme_client::now();
    let keys = letterme_server::domain_keys(store, now).await?;
    if keys.is_empty() {
        bail!(
            "no domain key in {} yet; run `letterme init` or start the server once",
            config.data_dir.display()
        );
    }
    let (dkim_ed25519, dkim_rsa) = letterme_server::mail_public_keys(store, config, now).await?;
    let mut mailx = Vec::new();
    if let Some(endpoint) = config.federation.endpoint() {
        let tls = letterme_server::ensure_federation_cert(config)?;
        let fp = letterme_server::tls::spki_fingerprint(&tls.cert)?;
        for k in keys {
            mailx.push((
                letterme_protocol::discovery::MailxRecord {
                    domain_key: k.key,
                    endpoint: endpoint.clone(),
                    tls_fingerprint: Some(fp.clone()),
                },
                k.note,
            ));
        }
    }
    Ok(records::Inputs {
        dkim_ed25519,
        dkim_rsa,
        mailx,
    })
}

/// `letterme domain-key next|activate`.
pub async fn domain_key(action: &cli::DomainKeyAction) -> Result<()> {
    let (config_path, next) = match action {
        cli::DomainKeyAction::Next(c) => (&c.config, true),
        cli::DomainKeyAction::Activate(c) => (&c.config, false),
    };
    let config = load_config(Some(config_path))?.normalized();
    let now = letterme_client::now();
    if next {
        let key = letterme_server::domain_key_next(&config, now).await?;
        output::domain_key_next(&key);
    } else {
        let (key, reattested) = letterme_server::domain_key_activate(&config, now).await?;
        output::domain_key_activated(&key, reattested);
    }
    Ok(())
}

/// `letterme queue`: the outbound queues, read from the server's database.
pub async fn queue(config_path: &Path, json: bool) -> Result<()> {
    let config = load_config(Some(config_path))?.normalized();
    let store = open_store(&config)?;
    let rows = store.federation_rows().await?;
    let smtp = store.smtp_rows().await?;
    output::queue(&rows, &smtp, json);
    Ok(())
}

/// Raises the soft limit on open files to the hard one: every connection takes one, and
/// the default soft limit (often 1024) is below what the connection caps allow.
fn raise_open_files(config: &letterme_server::Config) {
    // Both HTTP listeners, the inbound SMTP sessions, and room for the database, DNS and
    // outbound connections.
    let needed = 2 * config.limits.connections as u64 + config.smtp.max_sessions as u64 + 512;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "the open-files limit is below what the connection caps allow; raise LimitNOFILE \
             (docs/OPERATIONS.md §17) or lower limits.connections"
        ),
        Ok(limit) => tracing::info!(limit, "open files allowed"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// `letterme serve`: the native server and every adapter the config enables, all under
/// the server's one shutdown.
pub async fn serve(config: Option<&Path>, skip_dns_check: bool) -> Result<()> {
    let config = load_config(config)?.normalized();
    let domain = config.domain.clone();
    if config.is_production() && !skip_dns_check {
        let (store, _) = letterme_server::open_storage(&config, letterme_client::now()).await?;
        let (verdicts, _) = check_records(&config, &store).await?;
        drop(store);
        let failing: Vec<records::Verdict> =
            verdicts.iter().filter(|v| v.fails()).cloned().collect();
        if !failing.is_empty() {
            output::failing_records(&failing);
            bail!(
                "refusing to start in production: {} required DNS record(s) missing or wrong (above); \
                 publish them (`letterme dns` prints them all), or start with --skip-dns-check",
                failing.len()
            );
        }
        tracing::info!("DNS records checked: all required ones are in place");
    }
    raise_open_files(&config);
    let scheme = if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let running = letterme_server::start(config.clone(), Arc::new(SystemClock)).await?;
    if let Some(keys) = running.mail_keys.clone() {
        let worker = letterme_smtp_out::SmtpOut::new(letterme_smtp_out::Setup {
            store: running.store.clone(),
            keys,
            dns: Arc::new(mail_dns(&config)?),
            config: config.clone(),
            domain_key: running.domain_signing_key().clone(),
            clock: running.clock.clone(),
            wake: running.smtp_wake.clone(),
        })
        .map_err(|e| anyhow::anyhow!("outbound SMTP: {e}"))?;
        let worker = Arc::new(worker);
        running.spawn(|stop| worker.run(stop));
        tracing::info!(mode = %config.outbound.mode, "outbound SMTP delivery on");
    }
    let smtp = match config.smtp.listen.filter(|_| config.smtp.enabled) {
        Some(addr) => Some(letterme_smtp_in::start(&config, &running, addr).await?),
        None => None,
    };
    output::serving(
        &domain,
        &format!("{scheme}://{}", running.local_addr),
        running.federation_addr,
        smtp,
    );
    running
        .run_until(crate::shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    Ok(())
}
