//! `POST /v1/outbound`: a logged-in user hands over mail for addresses outside letter.me.
//!
//! In relay mode the body carries the RFC 5322 message; the server checks that its From is
//! the user, applies the rate limits and the daily cap, seals it under the queue key and
//! answers 202 only after the commit. In notice mode the body carries recipients only: the
//! server writes the notice itself, so no content ever reaches it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use letterme_protocol::api::{
    ErrorCode, ErrorLimit, LimitBucket, OutboundMode, OutboundRequest, OutboundResponse,
};
use letterme_protocol::{Address, b64};

use crate::store::{NewSmtp, SmtpKind};

use super::Authed;
use crate::error::ApiError;
use crate::state::AppState;

pub(super) async fn submit(
    State(state): State<Arc<AppState>>,
    Authed(session): Authed,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<OutboundResponse>), ApiError> {
    let result = accept(&state, &session.address, body).await;
    if let Err(e) = &result {
        state.metrics.error(e.code());
    }
    result
}

async fn accept(
    state: &AppState,
    sender: &Address,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<OutboundResponse>), ApiError> {
    let cfg = &state.config.outbound;
    let Some(out) = &state.outbound else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::OutboundDisabled,
            format!(
                "{} does not send to addresses outside letter.me ([outbound] mode = \"off\")",
                state.config.domain
            ),
        ));
    };
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MessageTooLarge,
            format!("the request could not be read: {}", e.body_text()),
        )
    })?;
    let req: OutboundRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(ErrorCode::BadJson, e.to_string()))?;
    if req.recipients.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::NoRecipients,
            "no recipients given",
        ));
    }
    if req.recipients.len() > state.config.smtp.max_recipients {
        return Err(ApiError::bad_request(
            ErrorCode::TooManyRecipients,
            format!(
                "at most {} recipients per message",
                state.config.smtp.max_recipients
            ),
        ));
    }
    let mut destinations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &req.recipients {
        let a = Address::parse(r)
            .map_err(|e| ApiError::bad_request(ErrorCode::BadAddress, e.to_string()))?;
        if a.domain() == state.config.domain {
            return Err(ApiError::bad_request(
                ErrorCode::LocalRecipient,
                format!("{a} is on this server; send it end-to-end encrypted instead"),
            ));
        }
        let list = destinations.entry(a.domain().to_owned()).or_default();
        if !list.contains(&a.to_string()) {
            list.push(a.to_string());
        }
    }
    // The queue row's time, which its sealed copy is bound to.
    let now = state.clock.now();
    let (kind, sealed, size) = match (cfg.mode, &req.message) {
        (OutboundMode::Relay, Some(m)) => {
            let raw = b64::decode(m).map_err(|_| {
                ApiError::bad_request(ErrorCode::BadMessage, "message is not base64")
            })?;
            let limit = state.config.limits.max_message_size.0;
            if raw.len() as u64 > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::MessageTooLarge,
                    format!("the message is larger than this server sends ({limit} bytes)"),
                ));
            }
            check_from(&raw, sender)?;
            check_lines(&raw)?;
            let size = raw.len() as u64;
            let sealed = out.queue_key.seal(&raw, &sender.to_string(), now);
            drop(zeroize::Zeroizing::new(raw));
            (SmtpKind::Relay, Some(sealed), size)
        }
        (OutboundMode::Relay, None) => {
            return Err(ApiError::bad_request(
                ErrorCode::NoMessage,
                "relay mode needs the message (field \"message\", base64 RFC 5322)",
            ));
        }
        (OutboundMode::Notice, None) => (SmtpKind::Notice, None, 0),
        (OutboundMode::Notice, Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::NoticeOnly,
                format!(
                    "{} sends only notices outside letter.me, never content; send without the message",
                    state.config.domain
                ),
            ));
        }
        (OutboundMode::Off, _) => unreachable!("no outbound state when the mode is off"),
    };
    let n = req.recipients.len() as u32;
    let now_f64 = state.clock.now_f64();
    if !out.user_limit.allow_n(&sender.to_string(), n, now_f64) {
        return Err(ApiError::rate_limited().with_limit(ErrorLimit::Bucket(LimitBucket::User)));
    }
    for (domain, list) in &destinations {
        if !out.domain_limit.allow_n(domain, list.len() as u32, now_f64) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("too much mail to {domain} right now; retry later"),
            )
            .with_limit(ErrorLimit::Bucket(LimitBucket::Domain))
            .with_domain(domain.clone()));
        }
    }
    let queued: Vec<String> = destinations.values().flatten().cloned().collect();
    let id = state
        .store
        .queue_smtp(NewSmtp {
            sender: sender.to_string(),
            kind,
            sealed,
            size,
            destinations: destinations.into_iter().collect(),
            now,
            daily_cap: cfg.daily_cap,
        })
        .await?;
    out.wake.notify_one();
    tracing::info!(%sender, id, recipients = queued.len(), mode = %cfg.mode, "queued for SMTP");
    Ok((
        StatusCode::ACCEPTED,
        Json(OutboundResponse {
            id,
            mode: cfg.mode,
            queued,
        }),
    ))
}

/// The message's From must be exactly the logged-in user, so no one sends as someone else
/// under this domain's DKIM signature (RFC 5322 §3.6.2; DMARC aligns on this header).
fn check_from(raw: &[u8], sender: &Address) -> Result<(), ApiError> {
    let bad = |why: String| ApiError::bad_request(ErrorCode::BadMessage, why);
    let msg = mail_parser::MessageParser::default()
        .parse_headers(raw)
        .ok_or_else(|| bad("the message has no RFC 5322 header".into()))?;
    let from: Vec<String> = msg
        .from()
        .map(|f| {
            f.iter()
                .filter_map(|a| a.address().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    match from.as_slice() {
        [one] if one == &sender.to_string().to_ascii_lowercase() => Ok(()),
        [] => Err(bad("the message has no From address".into())),
        _ => Err(ApiError::forbidden(
            ErrorCode::FromMismatch,
            format!("the message's From must be {sender}, the logged-in user"),
        )),
    }
}

/// The longest line RFC 5322 §2.1.1 allows, CRLF not counted.
const MAX_LINE: usize = 998;

/// Refuses what a receiving MTA could read differently from the DKIM signature and from
/// this server: every line ends in CRLF (no bare CR or LF, which some MTAs take as a line
/// end and so as the end of DATA: SMTP smuggling), no NUL, no line over 998 octets
/// (RFC 5322 §2.1.1, §2.3; RFC 5321 §4.5.2). Refused, not repaired (DECISIONS D60).
fn check_lines(raw: &[u8]) -> Result<(), ApiError> {
    let bad = |why: String| ApiError::bad_request(ErrorCode::BadMessage, why);
    let mut line = 1usize;
    let mut start = 0usize;
    let mut i = 0usize;
    while i < raw.len() {
        match raw[i] {
            0 => return Err(bad(format!("line {line} contains a NUL byte"))),
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                if i - start > MAX_LINE {
                    return Err(bad(format!(
                        "line {line} is longer than {MAX_LINE} octets (RFC 5322 §2.1.1)"
                    )));
                }
                i += 2;
                start = i;
                line += 1;
                continue;
            }
            b'\r' => return Err(bad(format!("line {line} has a CR without LF"))),
            b'\n' => return Err(bad(format!("line {line} ends in LF without CR"))),
            _ => {}
        }
        i += 1;
    }
    if raw.len() - start > MAX_LINE {
        return Err(bad(format!(
            "line {line} is longer than {MAX_LINE} octets (RFC 5322 §2.1.1)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smuggling_shapes_and_long_lines_are_refused_and_crlf_mail_passes() {
        let ok = b"From: a@x.test\r\nSubject: hi\r\n\r\nbody\r\n.dot\r\nlast";
        assert!(check_lines(ok).is_ok());
        let long = [b"A".repeat(998), b"\r\n".to_vec(), b"B".repeat(998)].concat();
        assert!(check_lines(&long).is_ok());
        for (raw, why) in [
            (
                &b"a\r\n\n.\r\nMAIL FROM:<x@y>\r\n"[..],
                "line 2 ends in LF without CR",
            ),
            (b"a\r\nb\r.\r\n", "line 2 has a CR without LF"),
            (b"a\r\nb\0c\r\n", "line 2 contains a NUL byte"),
            (
                &[b"x\r\n".to_vec(), b"A".repeat(999)].concat(),
                "line 2 is longer than 998",
            ),
            (
                &[b"A".repeat(999), b"\r\n".to_vec()].concat(),
                "line 1 is longer than 998",
            ),
        ] {
            let err = check_lines(raw).unwrap_err();
            assert_eq!(err.code(), &ErrorCode::BadMessage);
            assert!(
                err.detail.message.starts_with(why),
                "{}",
                err.detail.message
            );
        }
    }
}
