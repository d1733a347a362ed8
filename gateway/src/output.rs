//! Everything the commands print: the text for people and the `--json` form for scripts.
//! The commands compute; these functions only format, so each output has one home.

use std::path::Path;

use anyhow::Result;
use letterme_client::devices::PendingLink;
use letterme_client::profile::{Profile, ProfileDir};
use letterme_client::{AuditReport, KeyChange, Message, SendReport, SyncReport, Unlocked};
use letterme_protocol::Address;
use letterme_protocol::api::{DeviceInfo, DeviceList};
use letterme_protocol::device::Device;
use letterme_proxy::state::ProxyState;
use letterme_server::init::Initialized;
use letterme_server::store::{FederationRow, SmtpKind, SmtpRow};
use letterme_server::{Config, records};
use serde::Serialize;

/// A Unix time as RFC 3339, to the second.
pub fn date(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn names(v: &[Address]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `letterme account create`.
pub fn account_created(dir: &ProfileDir, profile: &Profile, json: bool) {
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
}

/// `letterme account join`.
pub fn joined(dir: &ProfileDir, profile: &Profile, json: bool) {
    let id = profile.device.as_ref().map(Device::id).unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "address": profile.address,
                "server": profile.server,
                "profile": dir.0,
                "device": id,
            })
        );
    } else {
        println!(
            "this machine is now device {id} of {} on {}",
            profile.address, profile.server
        );
        println!("profile: {}", dir.0.display());
        println!("it receives mail sent from now on; run `letterme sync` or `letterme proxy`");
    }
}

/// `letterme device list`.
pub fn devices(list: &[DeviceInfo], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(list)?);
        return Ok(());
    }
    for d in list {
        println!(
            "{}  added {}{}",
            d.id,
            date(d.added),
            if d.this { "  (this device)" } else { "" }
        );
    }
    Ok(())
}

/// `letterme device remove ID`.
pub fn device_removed(id: &str, after: &DeviceList, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "removed": id, "devices": after.devices, "index": after.index })
        );
    } else {
        println!(
            "removed device {id}: it receives nothing more ({} device{} left)",
            after.devices.len(),
            if after.devices.len() == 1 { "" } else { "s" }
        );
    }
}

/// `letterme device link`: the code, and its QR code on a terminal. Printed at once (the
/// command then waits for the new device).
pub fn link_code(profile: &Profile, pending: &PendingLink, json: bool) -> Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let join = format!(
        "letterme account join {} --code {} --server {}",
        profile.address, pending.code, profile.server
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "code": pending.code.to_string(),
                "expires": pending.expires,
                "join": join,
            })
        );
    } else {
        println!("code: {}", pending.code);
        println!("on the new machine, within 10 minutes:\n  {join}");
        if std::io::stdout().is_terminal()
            && let Ok(qr) = qrcode::QrCode::new(join.as_bytes())
        {
            use qrcode::render::unicode::Dense1x2;
            let art = qr
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .build();
            println!("{art}");
        }
        println!("waiting for the new machine…");
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// `letterme device link`, done.
pub fn device_linked(device: &Device, history: usize, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "linked": device.id(), "history": history })
        );
    } else {
        println!(
            "linked device {}: mail sent from now on reaches it too; it got the {history} \
             messages this device holds",
            device.id()
        );
    }
}

/// `letterme send`.
pub fn send_report(report: &SendReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
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
    Ok(())
}

/// `letterme sync`: the report, then each key-transparency alert on stderr.
pub fn sync_report(report: &SyncReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{} new message(s)", report.fetched);
        for (id, reason) in &report.refused {
            println!("refused {id}: {reason}");
        }
    }
    kt_alerts(report);
    Ok(())
}

fn kt_alerts(report: &SyncReport) {
    for alert in &report.kt_alerts {
        eprintln!("WARNING: {alert}");
    }
}

/// `letterme sync --watch`: each new message as it arrives.
pub fn watched(me: &Unlocked, report: &SyncReport, json: bool) {
    use std::io::Write as _;
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
    kt_alerts(report);
    let _ = std::io::stdout().flush();
}

/// `letterme list`.
pub fn message_list(messages: &[Message], json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id, "from": m.from, "to": m.to, "cc": m.cc, "subject": m.subject,
                    "date": m.date, "received": m.received, "signature_verified": m.signature_verified,
                    "folder": m.folder, "legacy": m.legacy.is_some(),
                    "attachments": m.attachments,
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&rows)?);
    } else if messages.is_empty() {
        println!("no messages (run `letterme sync` to fetch new mail)");
    } else {
        for m in messages {
            let mark = match (&m.legacy, m.folder.as_str()) {
                (_, "Junk") => "junk  ",
                (Some(_), _) => "legacy",
                (None, _) => "      ",
            };
            let files = match m.attachments.len() {
                0 => String::new(),
                n => format!("  [{n} attachment{}]", if n == 1 { "" } else { "s" }),
            };
            println!(
                "{}  {}  {mark}  {:<28}  {}{files}",
                &m.id[..12],
                date(m.date),
                m.from,
                m.subject
            );
        }
    }
    Ok(())
}

/// `letterme read`.
pub fn message(m: &Message, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(m)?);
    } else {
        print_message(m);
    }
    Ok(())
}

fn print_message(m: &Message) {
    println!("From: {}", m.from);
    println!("To: {}", names(&m.to));
    if !m.cc.is_empty() {
        println!("Cc: {}", names(&m.cc));
    }
    if !m.bcc.is_empty() {
        println!("Bcc: {}", names(&m.bcc));
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
    if !m.attachments.is_empty() {
        println!();
        println!("Attachments:");
        for (i, a) in m.attachments.iter().enumerate() {
            let name = if a.name.is_empty() {
                "(no name)"
            } else {
                &a.name
            };
            println!("  {}. {name}  {}  {} bytes", i + 1, a.content_type, a.size);
        }
    }
}

/// `letterme key rotate|revoke`.
pub fn key_change(change: &KeyChange, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(change)?);
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

/// `letterme kt audit`.
pub fn audit(report: &AuditReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
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

/// `letterme block --list`.
pub fn blocks(list: &[String], json: bool) {
    if json {
        println!("{}", serde_json::json!({ "blocks": list }));
    } else if list.is_empty() {
        println!("you block nobody");
    } else {
        for e in list {
            println!("{e}");
        }
    }
}

/// `letterme block [--remove] ENTRY`.
pub fn block_change(entry: &str, removed: bool, changed: bool, json: bool) {
    let what = match (removed, changed) {
        (false, true) => "now blocked",
        (false, false) => "was already blocked",
        (true, true) => "unblocked",
        (true, false) => "was not blocked",
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "entry": entry, "changed": changed })
        );
    } else {
        println!("{entry} {what}");
    }
}

/// The records to publish, as zone-file lines (`letterme dns`, and `init`).
pub fn zone(config: &Config, inputs: &records::Inputs) {
    print!(
        "{}",
        records::zone(config, &records::expected(config, inputs))
    );
}

/// `letterme check`.
pub fn check(config: &Config, verdicts: &[records::Verdict], dnssec: &str, ok: bool, json: bool) {
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
            serde_json::json!({ "domain": config.domain, "records": list, "dnssec": dnssec, "ok": ok })
        );
    } else {
        print!("{}", records::report(verdicts));
        println!("DNSSEC: {dnssec}");
    }
}

/// The records that keep `serve` from starting in production, on stderr.
pub fn failing_records(failing: &[records::Verdict]) {
    eprint!("{}", records::report(failing));
}

/// `letterme init`: what was written.
pub fn initialized(config_path: &Path, init: &Initialized) {
    let config = &init.config;
    println!("wrote {}", config_path.display());
    println!("data directory: {}", config.data_dir.display());
    println!("domain key: {}", init.domain_key.to_base64());
    println!(
        "TLS: {} (SPKI SHA-256 {})",
        if config.http.tls.is_some() {
            "on"
        } else {
            "off: plain HTTP on loopback"
        },
        init.tls_fingerprint
    );
    println!();
}

/// `letterme init`, then: the records to publish and how to start.
pub fn init_records(config_path: &Path, config: &Config, inputs: &records::Inputs) {
    println!(
        "; DNS records to publish (`letterme dns` prints them again, `letterme check` checks them)"
    );
    zone(config, inputs);
    println!();
    println!(
        "start the server with: letterme serve --config {}",
        config_path.display()
    );
}

/// `letterme domain-key next`.
pub fn domain_key_next(key: &letterme_protocol::IdentityPublicKey) {
    println!("next domain key: {}", key.to_base64());
    println!(
        "publish both records `letterme dns` now prints; after their TTL has passed everywhere, \
         stop the server and run `letterme domain-key activate`"
    );
}

/// `letterme domain-key activate`.
pub fn domain_key_activated(key: &letterme_protocol::IdentityPublicKey, reattested: usize) {
    println!(
        "domain key now {} ({reattested} account(s) attested again)",
        key.to_base64()
    );
    println!(
        "start the server; keep publishing the previous key's record for {} days (`letterme dns` prints it until then)",
        letterme_server::DOMAIN_KEY_OVERLAP / 86_400
    );
}

/// `letterme queue`: the federation and SMTP queues.
pub fn queue(rows: &[FederationRow], smtp: &[SmtpRow], json: bool) {
    let kind = |k: SmtpKind| {
        if k == SmtpKind::Notice {
            "notice"
        } else {
            "relay"
        }
    };
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
                    "size": r.size,
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
                "kind": kind(r.kind),
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
        return;
    }
    if rows.is_empty() && smtp.is_empty() {
        println!("the federation and SMTP queues are empty");
    }
    let error = |e: &Option<String>| e.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    for r in rows {
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
    for r in smtp {
        println!(
            "smtp {} #{} {} -> {} (attempts {}, next {}){}",
            kind(r.kind),
            r.message,
            r.sender,
            r.recipients.join(", "),
            r.attempts,
            date(r.next_attempt),
            error(&r.last_error)
        );
    }
}

/// The line harnesses read once `serve` listens: the URL first, federation next, SMTP last.
pub fn serving(
    domain: &str,
    url: &str,
    federation: Option<std::net::SocketAddr>,
    smtp: Option<std::net::SocketAddr>,
) {
    let federation = federation
        .map(|a| format!(", federation https://{a}"))
        .unwrap_or_default();
    match smtp {
        Some(s) => println!("letterme serving {domain} on {url}{federation}, smtp {s}"),
        None => println!("letterme serving {domain} on {url}{federation}"),
    }
}

/// What `proxy credentials --json` prints (DESIGN.md §3).
#[derive(Serialize)]
struct CredentialsView<'a> {
    imap: String,
    smtp: String,
    username: String,
    password: &'a str,
    tls_fingerprint: &'a str,
}

/// `letterme proxy credentials`: what the mail client needs.
pub fn credentials(
    address: &Address,
    state: &ProxyState,
    tls_fingerprint: &str,
    json: bool,
) -> Result<()> {
    let view = CredentialsView {
        imap: state.imap.to_string(),
        smtp: state.smtp.to_string(),
        username: address.to_string(),
        password: &state.password,
        tls_fingerprint,
    };
    if json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        println!(
            "IMAP server:     {} (STARTTLS or none; loopback only)",
            view.imap
        );
        println!(
            "SMTP server:     {} (STARTTLS or none; loopback only)",
            view.smtp
        );
        println!("Username:        {}", view.username);
        println!("Password:        {}", view.password);
        println!("TLS certificate: SHA-256 {}", view.tls_fingerprint);
    }
    Ok(())
}

/// `letterme proxy` once it listens.
pub fn proxy_listening(address: &Address, imap: std::net::SocketAddr, smtp: std::net::SocketAddr) {
    println!(
        "letterme proxy for {address}: IMAP {imap}, SMTP {smtp}; `letterme proxy credentials` shows the login"
    );
}
