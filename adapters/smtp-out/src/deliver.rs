//! One SMTP client session to a domain's MX (RFC 5321 §3, §4), by lettre: connect to the
//! hosts in preference order, STARTTLS (RFC 3207) whenever offered — required, with a
//! valid certificate, when the domain publishes MTA-STS or the host a TLSA record — then
//! one transaction per message over the same connection, each recipient's answer kept
//! apart, so one full mailbox does not fail the others.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

use crate::resolve::Route;

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    Accepted,
    /// 4xx, a broken connection, a timeout: try again later.
    Temporary(String),
    /// 5xx: no retry will help.
    Permanent(String),
}

/// A signed message for some recipients at one domain.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub sender: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
}

/// How the session is run.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// The name in EHLO.
    pub hello: String,
    pub port: u16,
    /// For connecting (with STARTTLS), and for each transaction.
    pub timeout: Duration,
    /// Extra trusted roots (PEM certificates) for required TLS.
    pub extra_roots: Vec<Vec<u8>>,
}

fn temporary_all(msgs: &[Outgoing], why: &str) -> Vec<Vec<(String, RcptResult)>> {
    msgs.iter()
        .map(|m| {
            m.recipients
                .iter()
                .map(|r| (r.clone(), RcptResult::Temporary(why.to_owned())))
                .collect()
        })
        .collect()
}

/// Delivers `msgs` over one connection to the first host of `route` that answers; the
/// results are per message, per recipient.
pub async fn deliver(
    route: &Route,
    params: &SessionParams,
    msgs: &[Outgoing],
) -> Vec<Vec<(String, RcptResult)>> {
    let mut last = String::from("no mail host answered");
    for host in &route.hosts {
        let require_tls = route.mta_sts || host.dane;
        for ip in &host.ips {
            let connected = tokio::time::timeout(
                params.timeout,
                connect(*ip, &host.name, require_tls, params),
            )
            .await;
            let mut conn = match connected {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::info!(host = %host.name, %ip, error = %e, "MX connection failed");
                    last = format!("{} ({ip}): {e}", host.name);
                    continue;
                }
                Err(_) => {
                    last = format!("{} ({ip}): timed out", host.name);
                    continue;
                }
            };
            let out = transactions(&mut conn, msgs, params.timeout, &host.name).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.quit()).await;
            return out;
        }
    }
    temporary_all(msgs, &last)
}

async fn connect(
    ip: IpAddr,
    host: &str,
    require_tls: bool,
    params: &SessionParams,
) -> Result<AsyncSmtpConnection, String> {
    let hello = ClientId::Domain(params.hello.clone());
    let tcp = tokio::net::TcpStream::connect(SocketAddr::new(ip, params.port))
        .await
        .map_err(|e| e.to_string())?;
    // lettre ends DATA with a second small write; with Nagle on, it waits for the peer's
    // delayed ACK (some 40 ms) on every message.
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello)
        .await
        .map_err(|e| e.to_string())?;
    if conn.can_starttls() {
        let tls = tls_parameters(host, require_tls, params)?;
        conn.starttls(tls, &hello)
            .await
            .map_err(|e| format!("STARTTLS failed: {e}"))?;
    } else if require_tls {
        conn.abort().await;
        // RFC 8461 §5 / RFC 7672 §2.2: never fall back to plaintext.
        return Err(
            "the domain requires TLS (MTA-STS or DANE), but the host does not offer STARTTLS"
                .into(),
        );
    }
    Ok(conn)
}

fn tls_parameters(
    host: &str,
    verify: bool,
    params: &SessionParams,
) -> Result<TlsParameters, String> {
    let mut b = TlsParameters::builder(host.to_owned());
    if verify {
        for pem in &params.extra_roots {
            b = b.add_root_certificate(Certificate::from_pem(pem).map_err(|e| e.to_string())?);
        }
    } else {
        // Opportunistic TLS (RFC 7435): encrypt against passive listeners, whatever the
        // certificate, rather than send in plaintext.
        b = b
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true);
    }
    b.build_rustls().map_err(|e| e.to_string())
}

/// One transaction per message; each has `timeout` on its own, so a slow message never
/// turns the answers already received for earlier ones into retries (and duplicates).
async fn transactions(
    conn: &mut AsyncSmtpConnection,
    msgs: &[Outgoing],
    timeout: Duration,
    host: &str,
) -> Vec<Vec<(String, RcptResult)>> {
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        if conn.has_broken() {
            out.extend(temporary_all(&msgs[i..], "the connection broke"));
            break;
        }
        let one = async {
            if i > 0 {
                // RFC 5321 §4.1.1.5: a clean slate for the next transaction.
                conn.command(Rset)
                    .await
                    .map_err(|e| format!("{host}: RSET: {e}"))?;
            }
            Ok::<_, String>(transaction(conn, m).await)
        };
        match tokio::time::timeout(timeout, one).await {
            Ok(Ok(r)) => out.push(r),
            Ok(Err(why)) => {
                out.extend(temporary_all(&msgs[i..], &why));
                break;
            }
            Err(_) => {
                // The state of this transaction is unknown; the connection is given up.
                out.extend(temporary_all(&msgs[i..], &format!("{host}: timed out")));
                break;
            }
        }
    }
    out
}

/// What the receiving MTA answered, for the queue and a notice: its words only quoted
/// after ours (`notice::remote_said`).
fn classify(e: &lettre::transport::smtp::Error) -> RcptResult {
    let ours = match e.status() {
        Some(code) => format!("the receiving server answered {code}"),
        None => "the SMTP exchange failed".to_owned(),
    };
    let why = letterme_server::notice::remote_said(&ours, &e.to_string());
    if e.is_permanent() {
        RcptResult::Permanent(why)
    } else {
        RcptResult::Temporary(why)
    }
}

async fn transaction(conn: &mut AsyncSmtpConnection, m: &Outgoing) -> Vec<(String, RcptResult)> {
    let all = |r: RcptResult| -> Vec<(String, RcptResult)> {
        m.recipients
            .iter()
            .map(|x| (x.clone(), r.clone()))
            .collect()
    };
    let info = conn.server_info().clone();
    let mut params = Vec::new();
    let utf8 = !m.sender.is_ascii() || m.recipients.iter().any(|r| !r.is_ascii());
    if utf8 {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            return all(RcptResult::Permanent(
                "an address is not ASCII and the receiving server does not support SMTPUTF8 (RFC 6531)".into(),
            ));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !m.data.is_ascii() {
        if !info.supports_feature(Extension::EightBitMime) {
            return all(RcptResult::Permanent(
                "the message has 8-bit content and the receiving server does not support 8BITMIME (RFC 6152)".into(),
            ));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let Ok(from) = m.sender.parse::<lettre::Address>() else {
        return all(RcptResult::Permanent(format!(
            "invalid sender {}",
            m.sender
        )));
    };
    if let Err(e) = conn.command(Mail::new(Some(from), params)).await {
        return all(classify(&e));
    }
    let mut results: Vec<(String, RcptResult)> = Vec::new();
    for r in &m.recipients {
        let res = match r.parse::<lettre::Address>() {
            Err(_) => RcptResult::Permanent(format!("invalid recipient address {r}")),
            Ok(a) => match conn.command(Rcpt::new(a, vec![])).await {
                Ok(_) => RcptResult::Accepted,
                Err(e) => classify(&e),
            },
        };
        results.push((r.clone(), res));
    }
    if !results.iter().any(|(_, r)| *r == RcptResult::Accepted) {
        return results;
    }
    let sent = match conn.command(Data).await {
        Ok(_) => conn.message(&m.data).await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        let r = classify(&e);
        for (_, res) in &mut results {
            if *res == RcptResult::Accepted {
                *res = r.clone();
            }
        }
    }
    results
}
