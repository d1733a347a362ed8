//! `letterme`: the binary is glue. It parses the command line, sets up logging and signals,
//! loads config, and wires the server and client libraries together.

mod cli;
mod demo;
mod proxy;

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use letterme_client::profile::ProfileDir;
use letterme_client::{ClientError, Draft, Message, Unlocked};
use letterme_protocol::Address;
use letterme_server::records;
use letterme_server::{Config, SystemClock};

use cli::{AccountCommand, Cli, Command};

/// Env var holding the passphrase that protects the private keys.
const PASSPHRASE_ENV: &str = "LETTERME_PASSPHRASE";
/// Largest body read from stdin.
const MAX_STDIN_BODY: u64 = 64 * 1024 * 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server_side = matches!(
        cli.command,
        Command::Serve(_) | Command::Init(_) | Command::Proxy(cli::ProxyArgs { action: None, .. })
    );
    init_logging(if server_side { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain joined, no backtrace.
            let msg = format!("{e:#}");
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LETTERME_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// The `--dns` servers, for the client's view of other domains' keys.
static CLIENT_DNS: std::sync::OnceLock<Vec<std::net::SocketAddr>> = std::sync::OnceLock::new();

async fn run(cli: Cli) -> Result<()> {
    let _ = CLIENT_DNS.set(cli.dns.clone());
    let profile_dir = ProfileDir(cli.profile.clone().unwrap_or_else(default_profile));
    match &cli.command {
        Command::Init(args) => init(args).await,
        Command::Serve(args) => serve(args.config.as_deref(), args.skip_dns_check).await,
        Command::Demo => demo::run().await,
        Command::Account(AccountCommand::Create {
            address,
            server,
            invite,
            json,
        }) => account_create(profile_dir, address, server, invite.as_deref(), json.json).await,
        Command::Send(args) => send(profile_dir, args).await,
        Command::Sync(args) if args.watch => watch(profile_dir, args.json.json).await,
        Command::Sync(args) => sync(profile_dir, args.json.json).await,
        Command::List(json) => list(profile_dir, json.json),
        Command::Proxy(args) => match &args.action {
            Some(cli::ProxyAction::Credentials(json)) => {
                proxy::credentials(&profile_dir, json.json)
            }
            None => {
                proxy::run(
                    profile_dir,
                    args.imap_listen,
                    args.smtp_listen,
                    args.allow_plaintext,
                )
                .await
            }
        },
        Command::Dns(args) => dns(&args.config).await,
        Command::Check(args) => check(&args.config.config, args.json.json).await,
        Command::DomainKey(action) => domain_key(action).await,
        Command::Queue(args) => queue(&args.config.config, args.json.json).await,
        Command::Block(args) => block(profile_dir, args).await,
        Command::Key(action) => key(profile_dir, action).await,
        Command::Kt(cli::KtAction::Audit { domain, json }) => {
            kt_audit(profile_dir, domain, json.json).await
        }
        Command::Kt(cli::KtAction::Forget { domain, yes }) => kt_forget(&profile_dir, domain, *yes),
        Command::Read(args) => {
            let m = unlock(profile_dir)?.read(&args.id)?;
            if args.json.json {
                println!("{}", serde_json::to_string(&m)?);
            } else {
                print_message(&m);
            }
            Ok(())
        }
    }
}

async fn account_create(
    dir: ProfileDir,
    address: &str,
    server: &str,
    invite: Option<&str>,
    json: bool,
) -> Result<()> {
    let address = parse_address(address)?;
    if dir.exists() {
        bail!(letterme_client::ClientError::ProfileExists(
            dir.0.display().to_string()
        ));
    }
    let pass = new_passphrase()?;
    let profile = letterme_client::create_account(&dir, &address, server, &pass, invite).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "address": profile.address,
                "server": profile.server,
                "profile": dir.0,
                "identity_key": profile.attestation.identity_key,
                "encryption_key": profile.attestation.encryption_key,
                "domain_key": profile.domain_key,
            })
        );
    } else {
        println!("created {} on {}", profile.address, profile.server);
        println!("profile: {}", dir.0.display());
        println!(
            "identity key: {}",
            profile.attestation.identity_key.to_base64()
        );
        println!("domain key (pinned): {}", profile.domain_key.to_base64());
    }
    Ok(())
}

async fn send(dir: ProfileDir, args: &cli::SendArgs) -> Result<()> {
    let me = unlock(dir)?;
    let draft = Draft {
        to: parse_addresses(&args.to)?,
        cc: parse_addresses(&args.cc)?,
        bcc: parse_addresses(&args.bcc)?,
        subject: args.subject.clone(),
        body: match &args.body {
            Some(b) => b.clone(),
            None => read_stdin_body()?,
        },
        allow_plaintext: args.allow_plaintext,
        ..Draft::default()
    };
    let online = me.connect().await?;
    let report = match online.send(&draft).await {
        Err(ClientError::PlaintextRefused(list)) if ask_plaintext(&list)? => {
            online
                .send(&Draft {
                    allow_plaintext: true,
                    ..draft
                })
                .await?
        }
        r => r?,
    };
    if args.json.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let names = |v: &[Address]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !report.recipients.is_empty() {
            println!(
                "sent {} end-to-end encrypted to {}",
                report.message_id,
                names(&report.recipients)
            );
        }
        if !report.relayed.is_empty() {
            println!(
                "sent {} as ordinary email, NOT end-to-end encrypted, to {}",
                report.message_id,
                names(&report.relayed)
            );
        }
        if !report.noticed.is_empty() {
            println!(
                "{} not on letter.me: they get a notice that a message waits for them, not its content",
                names(&report.noticed)
            );
        }
    }
    Ok(())
}

async fn sync(dir: ProfileDir, json: bool) -> Result<()> {
    let online = unlock(dir)?.connect().await?;
    let interactive = std::io::stderr().is_terminal() && !json;
    let mut progress = |done: usize, total: usize| {
        if interactive && total > 10 {
            eprint!("\rsyncing {done}/{total}");
        }
    };
    let report = online.sync(&mut progress).await?;
    if interactive && report.fetched + report.already_had > 10 {
        eprintln!();
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{} new message(s)", report.fetched);
        for (id, reason) in &report.refused {
            println!("refused {id}: {reason}");
        }
    }
    for alert in &report.kt_alerts {
        eprintln!("WARNING: {alert}");
    }
    if !report.kt_alerts.is_empty() {
        bail!("the key-transparency check of your own address found a problem (see above)")
    }
    if report.refused.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} message(s) failed verification and were set aside",
            report.refused.len()
        )
    }
}

async fn watch(dir: ProfileDir, json: bool) -> Result<()> {
    use std::io::Write as _;
    let mut online = unlock(dir)?.connect().await?;
    eprintln!("watching for new mail; Ctrl-C to stop");
    let mut print = |me: &Unlocked, report: &letterme_client::SyncReport| {
        for id in &report.new_ids {
            match me.read(id) {
                Ok(m) if json => println!("{}", serde_json::to_string(&m).unwrap_or_default()),
                Ok(m) => println!(
                    "new  {}  {}  {:<28}  {}",
                    &m.id[..12],
                    date(m.date),
                    m.from,
                    m.subject
                ),
                Err(e) => eprintln!("error: {e}"),
            }
        }
        for (id, reason) in &report.refused {
            eprintln!("refused {id}: {reason}");
        }
        for alert in &report.kt_alerts {
            eprintln!("WARNING: {alert}");
        }
        let _ = std::io::stdout().flush();
    };
    let mut no_progress = |_, _| {};
    tokio::select! {
        r = online.watch(&mut no_progress, &mut print) => Ok(r?),
        () = shutdown_signal() => Ok(()),
    }
}

fn list(dir: ProfileDir, json: bool) -> Result<()> {
    let messages = unlock(dir)?.list()?;
    if json {
        let rows: Vec<_> = messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "from": m.from, "to": m.to, "cc": m.cc, "subject": m.subject,
                    "date": m.date, "received": m.received, "signature_verified": m.signature_verified,
                    "folder": m.folder, "legacy": m.legacy.is_some(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&rows)?);
    } else if messages.is_empty() {
        println!("no messages (run `letterme sync` to fetch new mail)");
    } else {
        for m in &messages {
            let mark = match (&m.legacy, m.folder.as_str()) {
                (_, "Junk") => "junk  ",
                (Some(_), _) => "legacy",
                (None, _) => "      ",
            };
            println!(
                "{}  {}  {mark}  {:<28}  {}",
                &m.id[..12],
                date(m.date),
                m.from,
                m.subject
            );
        }
    }
    Ok(())
}

fn print_message(m: &Message) {
    let list = |v: &[Address]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("From: {}", m.from);
    println!("To: {}", list(&m.to));
    if !m.cc.is_empty() {
        println!("Cc: {}", list(&m.cc));
    }
    if !m.bcc.is_empty() {
        println!("Bcc: {}", list(&m.bcc));
    }
    println!("Date: {}", date(m.date));
    println!("Subject: {}", m.subject);
    println!("Message-ID: {}", m.message_id);
    if let Some(l) = &m.legacy {
        println!(
            "Arrived-From: classic email (MAIL FROM <{}> from {})",
            l.mail_from, l.client_ip
        );
        println!("Authentication-Results: {}", l.authentication_results);
        println!("Verdict: {} ({})", l.disposition, l.note);
        println!("Folder: {}", m.folder);
    } else {
        println!("Signature: verified (sender's attested identity key)");
    }
    println!();
    println!("{}", m.body);
}

fn date(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn default_profile() -> PathBuf {
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".letterme"),
        |h| PathBuf::from(h).join(".letterme"),
    )
}

fn parse_address(s: &str) -> Result<Address> {
    Address::parse(s).map_err(|e| anyhow::anyhow!("{e}"))
}

fn parse_addresses(v: &[String]) -> Result<Vec<Address>> {
    v.iter().map(|s| parse_address(s)).collect()
}

fn passphrase(prompt: &str) -> Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set {PASSPHRASE_ENV} or run in a terminal to be asked");
    }
    rpassword::prompt_password(prompt).context("cannot read the passphrase")
}

fn new_passphrase() -> Result<String> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        if p.is_empty() {
            bail!("{PASSPHRASE_ENV} is empty; choose a passphrase to protect your keys");
        }
        return Ok(p);
    }
    let p = passphrase("New passphrase for your keys: ")?;
    if p.is_empty() {
        bail!("an empty passphrase would leave your keys unprotected");
    }
    if passphrase("Repeat it: ")? != p {
        bail!("the passphrases differ");
    }
    Ok(p)
}

pub(crate) fn unlock(dir: ProfileDir) -> Result<Unlocked> {
    Ok(unlock_keeping_passphrase(dir)?.0)
}

/// Unlocks, and keeps the passphrase for commands that seal the keystore again.
fn unlock_keeping_passphrase(dir: ProfileDir) -> Result<(Unlocked, zeroize::Zeroizing<String>)> {
    let profile = dir.load()?;
    let pass = zeroize::Zeroizing::new(passphrase(&format!(
        "Passphrase for {}: ",
        profile.address
    ))?);
    let me = Unlocked::open(dir, &pass)?.with_dns(CLIENT_DNS.get().cloned().unwrap_or_default());
    Ok((me, pass))
}

/// `letterme key rotate` / `letterme key revoke`.
async fn key(dir: ProfileDir, action: &cli::KeyAction) -> Result<()> {
    let (revoke, overlap_days, json) = match action {
        cli::KeyAction::Rotate { overlap_days, json } => (false, *overlap_days, json.json),
        cli::KeyAction::Revoke { yes, json } => {
            if !yes && !confirm_revoke()? {
                bail!("not revoked; pass --yes to revoke without being asked");
            }
            (true, 0, json.json)
        }
    };
    if overlap_days > 365 {
        bail!("--overlap-days is at most 365");
    }
    let (me, pass) = unlock_keeping_passphrase(dir)?;
    let online = me.connect().await?;
    let change = online
        .change_key(&pass, revoke, overlap_days * 86_400)
        .await?;
    if json {
        println!("{}", serde_json::to_string(&change)?);
        return Ok(());
    }
    if change.resumed {
        println!("finished the key change that was interrupted");
    }
    println!(
        "{} has a new encryption key (version {}), logged at entry {} of the key-transparency log",
        change.address, change.version, change.log_index
    );
    if change.revoked {
        println!("the previous key is revoked: mail that arrives sealed to it is refused");
    } else {
        println!(
            "the previous key still opens mail that arrives until {}",
            date(change.previous_opens_until)
        );
    }
    println!("stored mail stays readable: the previous key stays in your keystore");
    Ok(())
}

/// `letterme kt audit DOMAIN`.
async fn kt_audit(dir: ProfileDir, domain: &str, json: bool) -> Result<()> {
    let online = unlock(dir)?.connect().await?;
    let report = online.audit(domain).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("{}: the log verifies from its first entry", report.domain);
    println!("size: {} entries", report.size);
    println!("head: {} (signed {})", report.root, date(report.signed_at));
    let ops: Vec<String> = report
        .operations
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    if !ops.is_empty() {
        println!("entries: {}", ops.join(", "));
    }
    match report.previously_seen {
        Some(n) => println!("extends the checkpoint this profile saw before (size {n})"),
        None => println!("first audit from this profile: the head is remembered"),
    }
    if let Some(w) = &report.witness {
        println!("your server as witness: {w}");
    }
    Ok(())
}

/// `letterme kt forget DOMAIN`.
fn kt_forget(dir: &ProfileDir, domain: &str, yes: bool) -> Result<()> {
    use std::io::{BufRead as _, Write as _};
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut file = letterme_client::kt::KtFile::load(&dir.0).map_err(anyhow::Error::msg)?;
    let Some(seen) = file.domains.get(&domain) else {
        println!("this profile remembers no checkpoint of {domain}");
        return Ok(());
    };
    if !yes {
        if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
            bail!("not forgotten; pass --yes to forget without being asked");
        }
        eprint!(
            "Forget the checkpoint of {domain} at size {}? Do this only when its operator \
             announced a restore from a backup. [y/N] ",
            seen.checkpoint.size
        );
        std::io::stderr().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            bail!("not forgotten");
        }
    }
    let size = seen.checkpoint.size;
    file.domains.remove(&domain);
    file.replace_on_disk(&dir.0).map_err(anyhow::Error::msg)?;
    println!("forgot the checkpoint of {domain} at size {size}; the next check starts afresh");
    Ok(())
}

/// Asks on the terminal before a revocation; without a terminal the answer is no.
fn confirm_revoke() -> Result<bool> {
    use std::io::{BufRead as _, Write as _};
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(false);
    }
    eprint!(
        "Revoke your encryption key? Mail that arrives sealed to it from now on will be \
         refused (ask its senders to send again). [y/N] "
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// `letterme dns`: the records to publish, with the real keys, endpoint and TLS key.
async fn dns(config_path: &Path) -> Result<()> {
    let config = load_config(Some(config_path))?.normalized();
    let store = letterme_server::store::Store::open(&config.database_path())
        .with_context(|| format!("cannot open {}", config.database_path().display()))?;
    let inputs = record_inputs(&config, &store).await?;
    print!(
        "{}",
        records::zone(&config, &records::expected(&config, &inputs))
    );
    Ok(())
}

/// `letterme check`: every record resolved live and judged.
async fn check(config_path: &Path, json: bool) -> Result<()> {
    let config = load_config(Some(config_path))?.normalized();
    let store = letterme_server::store::Store::open(&config.database_path())
        .with_context(|| format!("cannot open {}", config.database_path().display()))?;
    let (verdicts, dnssec) = check_records(&config, &store).await?;
    let failing: Vec<String> = verdicts
        .iter()
        .filter(|v| v.fails())
        .map(|v| format!("{} {}", v.rtype, v.name))
        .collect();
    if json {
        let list: Vec<serde_json::Value> = verdicts
            .iter()
            .map(|v| {
                serde_json::json!({
                    "name": v.name, "type": v.rtype, "status": v.status.as_str(),
                    "required": v.required, "why": v.why, "found": v.found, "fix": v.fix,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "domain": config.domain, "records": list, "dnssec": dnssec, "ok": failing.is_empty() })
        );
    } else {
        print!("{}", records::report(&verdicts));
        println!("DNSSEC: {dnssec}");
    }
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
    let dns = letterme_server::dns::HickoryMailDns::new(
        &config.dns.nameservers,
        std::time::Duration::from_millis(config.dns.timeout_ms),
        config.dns.attempts,
    )
    .map_err(|e| anyhow::anyhow!("DNS: {e}"))?;
    let verdicts = records::check(&dns, &expected).await;
    let dnssec = records::dnssec_status(&config.dns.nameservers, &config.domain).await;
    Ok((verdicts, dnssec))
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

async fn domain_key(action: &cli::DomainKeyAction) -> Result<()> {
    let (config_path, next) = match action {
        cli::DomainKeyAction::Next(c) => (&c.config, true),
        cli::DomainKeyAction::Activate(c) => (&c.config, false),
    };
    let config = load_config(Some(config_path))?.normalized();
    let now = letterme_client::now();
    if next {
        let key = letterme_server::domain_key_next(&config, now).await?;
        println!("next domain key: {}", key.to_base64());
        println!(
            "publish both records `letterme dns` now prints; after their TTL has passed everywhere, \
             stop the server and run `letterme domain-key activate`"
        );
    } else {
        let (key, reattested) = letterme_server::domain_key_activate(&config, now).await?;
        println!(
            "domain key now {} ({reattested} account(s) attested again)",
            key.to_base64()
        );
        println!(
            "start the server; keep publishing the previous key's record for {} days (`letterme dns` prints it until then)",
            letterme_server::DOMAIN_KEY_OVERLAP / 86_400
        );
    }
    Ok(())
}

/// `letterme queue`: the outbound queue, read from the server's database.
async fn queue(config_path: &Path, json: bool) -> Result<()> {
    let config = load_config(Some(config_path))?.normalized();
    let store = letterme_server::store::Store::open(&config.database_path())
        .with_context(|| format!("cannot open {}", config.database_path().display()))?;
    let rows = store.federation_rows().await?;
    let smtp = store.smtp_rows().await?;
    if json {
        let mut list: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "via": "federation",
                    "destination": r.destination,
                    "envelope": letterme_protocol::codec::hex(&r.envelope_id),
                    "sender": r.sender,
                    "recipients": r.recipients,
                    "queued_at": r.queued_at,
                    "attempts": r.attempts,
                    "next_attempt": r.next_attempt,
                    "last_error": r.last_error,
                })
            })
            .collect();
        list.extend(smtp.iter().map(|r| {
            serde_json::json!({
                "via": "smtp",
                "kind": if r.kind == letterme_server::store::SmtpKind::Notice { "notice" } else { "relay" },
                "destination": r.domain,
                "message": r.message,
                "sender": r.sender,
                "recipients": r.recipients,
                "size": r.size,
                "queued_at": r.queued_at,
                "attempts": r.attempts,
                "next_attempt": r.next_attempt,
                "last_error": r.last_error,
            })
        }));
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if rows.is_empty() && smtp.is_empty() {
        println!("the federation and SMTP queues are empty");
    }
    let error = |e: &Option<String>| e.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    for r in &rows {
        println!(
            "federation {} {} -> {} (attempts {}, next {}){}",
            letterme_protocol::codec::hex(&r.envelope_id),
            r.sender,
            r.recipients.join(", "),
            r.attempts,
            date(r.next_attempt),
            error(&r.last_error)
        );
    }
    for r in &smtp {
        println!(
            "smtp {} #{} {} -> {} (attempts {}, next {}){}",
            if r.kind == letterme_server::store::SmtpKind::Notice {
                "notice"
            } else {
                "relay"
            },
            r.message,
            r.sender,
            r.recipients.join(", "),
            r.attempts,
            date(r.next_attempt),
            error(&r.last_error)
        );
    }
    Ok(())
}

/// `letterme block`: the user's own block list, kept by their server.
async fn block(dir: ProfileDir, args: &cli::BlockArgs) -> Result<()> {
    let online = unlock(dir)?.connect().await?;
    if args.list {
        let list = online.api.blocks().await?;
        if args.json.json {
            println!("{}", serde_json::json!({ "blocks": list }));
        } else if list.is_empty() {
            println!("you block nobody");
        } else {
            for e in list {
                println!("{e}");
            }
        }
        return Ok(());
    }
    let entry = args.entry.as_deref().unwrap_or_default();
    let (entry, changed) = online.api.set_block(entry, !args.remove).await?;
    let what = match (args.remove, changed) {
        (false, true) => "now blocked",
        (false, false) => "was already blocked",
        (true, true) => "unblocked",
        (true, false) => "was not blocked",
    };
    if args.json.json {
        println!(
            "{}",
            serde_json::json!({ "entry": entry, "changed": changed })
        );
    } else {
        println!("{entry} {what}");
    }
    Ok(())
}

/// Asks on the terminal whether copies to `list` may leave end-to-end encryption; without
/// a terminal the answer is no (the error then names `--allow-plaintext`).
fn ask_plaintext(list: &[Address]) -> Result<bool> {
    use std::io::{BufRead as _, Write as _};
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(false);
    }
    let names: Vec<&str> = list.iter().map(Address::as_str).collect();
    eprint!(
        "{} not on letter.me. Their copy leaves end-to-end encryption: your server sends it \
         as ordinary email, readable by the servers on the way. Send it anyway? [y/N] ",
        names.join(", ")
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

fn read_stdin_body() -> Result<String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN_BODY + 1)
        .read_to_end(&mut buf)
        .context("cannot read the body from stdin")?;
    if buf.len() as u64 > MAX_STDIN_BODY {
        bail!("the body on stdin is larger than {MAX_STDIN_BODY} bytes");
    }
    String::from_utf8(buf).map_err(|_| anyhow::anyhow!("the body on stdin is not valid UTF-8"))
}

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

async fn serve(config: Option<&Path>, skip_dns_check: bool) -> Result<()> {
    let config = load_config(config)?.normalized();
    let domain = config.domain.clone();
    if config.is_production() && !skip_dns_check {
        let (store, _) = letterme_server::open_storage(&config, letterme_client::now()).await?;
        let (verdicts, _) = check_records(&config, &store).await?;
        drop(store);
        let failing: Vec<&records::Verdict> = verdicts.iter().filter(|v| v.fails()).collect();
        if !failing.is_empty() {
            let owned: Vec<records::Verdict> = failing.into_iter().cloned().collect();
            eprint!("{}", records::report(&owned));
            bail!(
                "refusing to start in production: {} required DNS record(s) missing or wrong (above); \
                 publish them (`letterme dns` prints them all), or start with --skip-dns-check",
                owned.len()
            );
        }
        tracing::info!("DNS records checked: all required ones are in place");
    }
    let scheme = if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let running = letterme_server::start(config.clone(), Arc::new(SystemClock)).await?;
    if let Some(keys) = running.mail_keys.clone() {
        let dns = letterme_server::dns::HickoryMailDns::new(
            &config.dns.nameservers,
            std::time::Duration::from_millis(config.dns.timeout_ms),
            config.dns.attempts,
        )
        .map_err(|e| anyhow::anyhow!("DNS: {e}"))?;
        let worker = letterme_smtp_out::SmtpOut::new(letterme_smtp_out::Setup {
            store: running.store.clone(),
            keys,
            dns: Arc::new(dns),
            config: config.clone(),
            domain_key: running.domain_signing_key().clone(),
            clock: running.clock.clone(),
            wake: running.smtp_wake.clone(),
        })
        .map_err(|e| anyhow::anyhow!("outbound SMTP: {e}"))?;
        tokio::spawn(Arc::new(worker).run(running.shutdown_signal()));
        tracing::info!(mode = %config.outbound.mode, "outbound SMTP delivery on");
    }
    let (stop_smtp, smtp_stop) = tokio::sync::watch::channel(false);
    let smtp = match config.smtp.listen.filter(|_| config.smtp.enabled) {
        Some(addr) => Some(letterme_smtp_in::start(&config, &running, addr, smtp_stop).await?),
        None => None,
    };
    // Harnesses read this line: the URL first, federation next, SMTP last.
    let federation = running
        .federation_addr
        .map(|a| format!(", federation https://{a}"))
        .unwrap_or_default();
    match smtp {
        Some(s) => println!(
            "letterme serving {domain} on {scheme}://{}{federation}, smtp {s}",
            running.local_addr
        ),
        None => println!(
            "letterme serving {domain} on {scheme}://{}{federation}",
            running.local_addr
        ),
    }
    let result = running.run_until(shutdown_signal()).await;
    let _ = stop_smtp.send(true);
    result.context("the HTTP server failed")?;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// The host part of a URL like `https://host:port/path`.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_owned())
}

async fn init(args: &cli::InitArgs) -> Result<()> {
    if args.config.exists() {
        bail!(
            "{} already exists; remove it or pass --config PATH",
            args.config.display()
        );
    }
    let mut config = Config::for_domain(&args.domain);
    if let Some(d) = &args.data {
        config.data_dir.clone_from(d);
    }
    if let Some(l) = args.http_listen {
        config.http.listen = l;
    }
    config.http.public_url.clone_from(&args.public_url);
    if args.smtp_listen.is_some() {
        config.smtp.listen = args.smtp_listen;
    }
    config.federation.listen = args.federation_listen;
    config
        .federation
        .public_url
        .clone_from(&args.federation_url);
    // A certificate always exists (its fingerprint is published); it is served when the
    // listener is not loopback or the public URL is https.
    let tls_dir = config.data_dir.join("tls");
    let tls = letterme_server::config::TlsConfig {
        cert: tls_dir.join("cert.pem"),
        key: tls_dir.join("key.pem"),
    };
    let public_url = config.http.public_url.clone();
    let https = public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    let listen_ip = config.http.listen.ip();
    if !listen_ip.is_loopback()
        && !https
        && let Some(u) = &public_url
    {
        bail!("--public-url {u} must be https: a server listening on {listen_ip} serves TLS only");
    }
    if https || !listen_ip.is_loopback() {
        config.http.tls = Some(tls.clone());
    }
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    if !tls.cert.exists() {
        let mut names = vec![config.domain.clone()];
        names.extend(public_url.as_deref().and_then(url_host));
        if !listen_ip.is_unspecified() {
            names.push(listen_ip.to_string());
        }
        let mut seen = std::collections::BTreeSet::new();
        names.retain(|n| seen.insert(n.clone()));
        letterme_server::tls::generate_self_signed(&names, &tls.cert, &tls.key)?;
    }
    let fingerprint = letterme_server::tls::spki_fingerprint(&tls.cert)?;
    let (store, key) = letterme_server::open_storage(&config, letterme_client::now()).await?;
    let text = toml::to_string_pretty(&config).context("cannot render the config")?;
    std::fs::write(
        &args.config,
        format!("# letter.me server config (see docs/OPERATIONS.md)\n{text}"),
    )
    .with_context(|| format!("cannot write {}", args.config.display()))?;
    println!("wrote {}", args.config.display());
    println!("data directory: {}", config.data_dir.display());
    println!("domain key: {}", key.public().to_base64());
    println!(
        "TLS: {} (SPKI SHA-256 {fingerprint})",
        if config.http.tls.is_some() {
            "on"
        } else {
            "off: plain HTTP on loopback"
        }
    );
    println!();
    let inputs = record_inputs(&config, &store).await?;
    println!(
        "; DNS records to publish (`letterme dns` prints them again, `letterme check` checks them)"
    );
    print!(
        "{}",
        records::zone(&config, &records::expected(&config, &inputs))
    );
    println!();
    println!(
        "start the server with: letterme serve --config {}",
        args.config.display()
    );
    Ok(())
}
