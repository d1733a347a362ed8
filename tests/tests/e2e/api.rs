//! The HTTP API against bad input, forged and replayed envelopes, expired tokens, quotas,
//! rate limits and retention — on an in-process server with a clock the test moves.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use letterme_client::profile::ProfileDir;
use letterme_client::{ClientError, Draft, Online, Unlocked};
use letterme_protocol::envelope::{SignerKind, seal};
use letterme_protocol::{Address, Payload, SigningKeypair};
use letterme_tests::PASSPHRASE;
use letterme_tests::world::InProcess;
use reqwest::StatusCode;
use serde_json::Value;

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{status}: not JSON: {e}"));
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {body}"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    (status, code.to_owned())
}

fn payload(from: &Address, to: &Address, subject: &str) -> Payload {
    Payload {
        from: from.clone(),
        to: vec![to.clone()],
        cc: vec![],
        bcc: vec![],
        subject: subject.into(),
        body: "body".into(),
        headers: vec![],
        date: 0,
        message_id: "<t@x.test>".into(),
        in_reply_to: None,
        references: vec![],
        legacy: None,
        mime: None,
        blobs: vec![],
        state: vec![],
    }
}

/// Logs in by hand, returning a bearer token.
async fn token(online: &Online, url: &str) -> String {
    let http = reqwest::Client::new();
    let me = &online.me.profile.address;
    let c: Value = http
        .post(format!("{url}/v1/auth/challenge"))
        .json(&serde_json::json!({ "address": me }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let challenge: [u8; 32] =
        letterme_protocol::b64::decode_array(c["challenge"].as_str().unwrap()).unwrap();
    let sig =
        letterme_protocol::auth::sign_challenge(&online.me.keys.device, "x.test", me, &challenge);
    let t: Value = http
        .post(format!("{url}/v1/auth/token"))
        .json(&serde_json::json!({ "address": me, "challenge": c["challenge"], "signature": sig }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_input_gets_4xx_json_never_500() {
    let w =
        InProcess::start(|c| c.limits.max_message_size = letterme_server::config::ByteSize(10_000))
            .await;
    let alice = w.user("alice").await;
    let tok = token(&alice, &w.url).await;
    let http = reqwest::Client::new();
    let u = |p: &str| format!("{}{p}", w.url);

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (http.post(u("/v1/accounts")).header("content-type", "application/json").body("{not json"), StatusCode::BAD_REQUEST, "bad_json"),
        (http.post(u("/v1/accounts")).header("content-type", "application/json").body(vec![b'{', 0xff, 0xfe, b'}']), StatusCode::BAD_REQUEST, "bad_json"),
        (http.post(u("/v1/accounts")).body("{}"), StatusCode::BAD_REQUEST, "bad_json"),
        (http.post(u("/v1/accounts")).header("content-type", "application/json").body("[".repeat(10_000)), StatusCode::BAD_REQUEST, "bad_json"),
        (http.post(u("/v1/accounts")).header("content-type", "application/json").body(vec![b' '; 100_000]), StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        (http.post(u("/v1/auth/challenge")).json(&serde_json::json!({"address": "no-at-sign"})), StatusCode::BAD_REQUEST, "bad_address"),
        (http.post(u("/v1/auth/token")).json(&serde_json::json!({"address": "alice@x.test", "challenge": "AAAA", "signature": "AAAA"})), StatusCode::BAD_REQUEST, "bad_json"),
        (http.get(u("/v1/nope")), StatusCode::NOT_FOUND, "not_found"),
        (http.get(u("/")), StatusCode::NOT_FOUND, "not_found"),
        (http.put(u("/v1/messages")), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (http.get(u("/v1/messages")), StatusCode::UNAUTHORIZED, "missing_token"),
        (http.get(u("/v1/messages")).header("authorization", "Basic eHg6eXk="), StatusCode::UNAUTHORIZED, "invalid_token"),
        (http.get(u("/v1/messages")).bearer_auth("lm1_forged"), StatusCode::UNAUTHORIZED, "invalid_token"),
        (http.get(u("/v1/keys/bob@x.test")), StatusCode::UNAUTHORIZED, "missing_token"),
        (http.post(u("/v1/messages")).bearer_auth(&tok).body(vec![0u8; 200]), StatusCode::BAD_REQUEST, "malformed_envelope"),
        (http.post(u("/v1/messages")).bearer_auth(&tok).body(vec![0u8; 20_000]), StatusCode::PAYLOAD_TOO_LARGE, "message_too_large"),
        (http.get(u("/v1/messages/zz")).bearer_auth(&tok), StatusCode::BAD_REQUEST, "bad_id"),
        (http.get(u("/v1/messages/+0000000000000000000000000000000")).bearer_auth(&tok), StatusCode::BAD_REQUEST, "bad_id"),
        (http.get(u("/v1/keys/%FF%FE@x.test")).bearer_auth(&tok), StatusCode::BAD_REQUEST, "bad_path"),
        (http.get(u("/v1/messages/00000000000000000000000000000000")).bearer_auth(&tok), StatusCode::NOT_FOUND, "not_found"),
        (http.get(u("/v1/messages?after=abc")).bearer_auth(&tok), StatusCode::BAD_REQUEST, "bad_query"),
        (http.post(u("/v1/messages/ack")).bearer_auth(&tok).json(&serde_json::json!({"ids": ["nothex"]})), StatusCode::BAD_REQUEST, "bad_id"),
        (http.post(u("/v1/messages/fetch")).json(&serde_json::json!({"ids": []})), StatusCode::UNAUTHORIZED, "missing_token"),
        (http.post(u("/v1/messages/fetch")).bearer_auth(&tok).json(&serde_json::json!({"ids": ["nothex"]})), StatusCode::BAD_REQUEST, "bad_id"),
        (http.post(u("/v1/messages/fetch")).bearer_auth(&tok).json(&serde_json::json!({"ids": vec!["00000000000000000000000000000000"; 1001]})), StatusCode::BAD_REQUEST, "too_many"),
        (http.post(u("/v1/messages/fetch")).bearer_auth(&tok).json(&serde_json::json!({"ids": [], "more": 1})), StatusCode::BAD_REQUEST, "bad_json"),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let (got_status, got_code) = error_of(req.send().await.unwrap()).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "case {i}");
    }
    // Still healthy after all that.
    let health = http.get(u("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    assert!(alice.api.list(0).await.is_ok());
    w.clock
        .advance(Duration::from_secs(letterme_server::auth::TOKEN_TTL + 1));
    let tok = token(&alice, &w.url).await; // a fresh one works
    let err = alice.api.list(0).await.unwrap_err();
    assert!(
        matches!(&err, letterme_client::ClientError::Api { status: 401, code, .. } if code == "expired_token"),
        "{err}"
    );
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/messages", w.url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn tampered_forged_and_replayed_envelopes_are_rejected() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let tok = token(&alice, &w.url).await;
    let http = reqwest::Client::new();
    let send = |bytes: Vec<u8>| {
        http.post(format!("{}/v1/messages", w.url))
            .bearer_auth(&tok)
            .body(bytes)
            .send()
    };
    let (a, b) = (
        alice.me.profile.address.clone(),
        bob.me.profile.address.clone(),
    );
    let bob_key = bob.me.keys.encryption.public();
    let now = w.clock.as_ref();
    let now = letterme_server::Clock::now(now);
    let good = seal(
        SignerKind::User,
        &alice.me.keys.device,
        &payload(&a, &b, "hi"),
        &[(b.clone(), bob_key)],
        now,
    )
    .unwrap();

    // Tampered ciphertext.
    let mut bytes = good.encode();
    let n = bytes.len();
    bytes[n - 70] ^= 1;
    assert_eq!(
        error_of(send(bytes).await.unwrap()).await,
        (StatusCode::BAD_REQUEST, "bad_signature".into())
    );

    // Forged sender signature: mallory's key, claiming to be alice.
    let mallory = SigningKeypair::generate();
    let forged = seal(
        SignerKind::User,
        &mallory,
        &payload(&a, &b, "hi"),
        &[(b.clone(), bob_key)],
        now,
    )
    .unwrap();
    assert_eq!(
        error_of(send(forged.encode()).await.unwrap()).await,
        (StatusCode::FORBIDDEN, "sender_mismatch".into())
    );

    // Claiming another sender.
    let as_bob = seal(
        SignerKind::User,
        &alice.me.keys.device,
        &payload(&b, &b, "hi"),
        &[(b.clone(), bob_key)],
        now,
    )
    .unwrap();
    assert_eq!(
        error_of(send(as_bob.encode()).await.unwrap()).await,
        (StatusCode::FORBIDDEN, "sender_mismatch".into())
    );

    // A stale envelope (replay of something old with a fresh id would need a new signature).
    let stale = seal(
        SignerKind::User,
        &alice.me.keys.device,
        &payload(&a, &b, "hi"),
        &[(b.clone(), bob_key)],
        now - 3 * 86_400,
    )
    .unwrap();
    assert_eq!(
        error_of(send(stale.encode()).await.unwrap()).await,
        (StatusCode::BAD_REQUEST, "stale_envelope".into())
    );

    // The good one, then its replay.
    assert_eq!(
        send(good.encode()).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        error_of(send(good.encode()).await.unwrap()).await,
        (StatusCode::CONFLICT, "replay".into())
    );
    // Still refused after bob synced and the server deleted it.
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.fetched, 1);
    assert_eq!(
        error_of(send(good.encode()).await.unwrap()).await,
        (StatusCode::CONFLICT, "replay".into())
    );
    assert_eq!(bob.me.list().unwrap().len(), 1);

    // Unknown recipients: refused as a whole, nothing stored.
    let carol = Address::parse("carol@x.test").unwrap();
    let to_unknown = seal(
        SignerKind::User,
        &alice.me.keys.device,
        &payload(&a, &carol, "hi"),
        &[(carol.clone(), bob_key), (b.clone(), bob_key)],
        now,
    )
    .unwrap();
    let resp = send(to_unknown.encode()).await.unwrap();
    assert_eq!(
        error_of(resp).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_recipients".into()
        )
    );
    assert!(bob.api.list(0).await.unwrap().is_empty());
}

/// What a compromised server can do: store any bytes as an envelope for `to`, past the
/// API's checks.
async fn plant(
    w: &InProcess,
    id: [u8; 16],
    envelope: Vec<u8>,
    from: &Address,
    to: &Address,
    now: u64,
) {
    w.server
        .store
        .deliver(letterme_server::store::NewDelivery {
            id,
            sender: from.to_string(),
            envelope,
            blobs: vec![],
            recipients: vec![to.to_string()],
            received: now,
            quota: u64::MAX,
            device: None,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_forged_message_is_refused_at_sync_and_set_aside() {
    // The server itself is compromised: it stores an envelope "from alice" signed by another
    // key. bob's client checks the sender against alice's attested key and refuses it.
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let (a, b) = (
        alice.me.profile.address.clone(),
        bob.me.profile.address.clone(),
    );
    let mallory = SigningKeypair::generate();
    let now = letterme_server::Clock::now(w.clock.as_ref());
    let forged = seal(
        SignerKind::User,
        &mallory,
        &payload(&a, &b, "pay me"),
        &[(b.clone(), bob.me.keys.encryption.public())],
        now,
    )
    .unwrap();
    plant(&w, forged.id.0, forged.encode(), &a, &b, now).await;
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.fetched, 0);
    assert_eq!(report.refused.len(), 1);
    assert!(
        report.refused[0]
            .1
            .contains("not alice@x.test's verified key"),
        "{:?}",
        report.refused
    );
    assert!(bob.me.list().unwrap().is_empty());
}

#[tokio::test]
async fn a_tampered_envelope_among_genuine_ones_is_refused_alone() {
    // The server is compromised: among alice's genuine envelopes it stores copies with a
    // byte of ciphertext or of the signature changed, and bytes that do not decode. The
    // page's signatures are checked as one batch (DECISIONS D77); the batch fails, and each
    // is then checked alone: exactly the spoilt ones are refused.
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let (a, b) = (
        alice.me.profile.address.clone(),
        bob.me.profile.address.clone(),
    );
    let now = letterme_server::Clock::now(w.clock.as_ref());
    for i in 0..12 {
        let mut env = seal(
            SignerKind::User,
            &alice.me.keys.device,
            &payload(&a, &b, &format!("message {i}")),
            &[(b.clone(), bob.me.keys.encryption.public())],
            now,
        )
        .unwrap();
        match i {
            4 => env.ciphertext[0] ^= 1,
            9 => env.signature.0[40] ^= 1,
            _ => {}
        }
        plant(&w, env.id.0, env.encode(), &a, &b, now).await;
        // Bytes that are no envelope at all, between the two: the checked signatures
        // still line up with their envelopes.
        if i == 6 {
            plant(&w, [0x42; 16], b"not an envelope".to_vec(), &a, &b, now).await;
        }
    }
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.fetched, 10);
    let mut reasons: Vec<&str> = report.refused.iter().map(|(_, r)| r.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].starts_with("malformed envelope"), "{reasons:?}");
    for reason in &reasons[1..] {
        assert!(reason.contains("signature does not verify"), "{reason}");
    }
    assert_eq!(bob.me.list().unwrap().len(), 10);
}

#[tokio::test]
async fn key_lookup_needs_auth_hides_existence_and_is_rate_limited() {
    let w = InProcess::start(|c| {
        c.limits.key_lookups_per_second = 1;
        c.limits.key_lookup_burst = 3;
    })
    .await;
    let alice = w.user("alice").await;
    let _bob = w.user("bob").await;
    let tok = token(&alice, &w.url).await;
    let http = reqwest::Client::new();
    let get = |who: &str| {
        http.get(format!("{}/v1/keys/{who}", w.url))
            .bearer_auth(&tok)
            .send()
    };
    let known = get("bob@x.test").await.unwrap();
    assert_eq!(known.status(), StatusCode::OK);
    let known: Value = known.json().await.unwrap();
    let unknown = get("nobody@x.test").await.unwrap();
    assert_eq!(unknown.status(), StatusCode::OK);
    let unknown: Value = unknown.json().await.unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&known), keys(&unknown));
    assert_eq!(known["found"], true);
    assert_eq!(unknown["found"], false);
    // Burst of 3 used up (the third below); the fourth is limited.
    assert_eq!(get("bob@x.test").await.unwrap().status(), StatusCode::OK);
    let limited = get("bob@x.test").await.unwrap();
    assert_eq!(limited.headers().get("retry-after").unwrap(), "1");
    assert_eq!(
        error_of(limited).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
    );
    w.clock.advance(Duration::from_secs(2));
    assert_eq!(get("bob@x.test").await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn quota_and_retention() {
    let w = InProcess::start(|c| c.limits.quota = letterme_server::config::ByteSize(3500)).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let draft = |s: &str| Draft {
        to: vec![bob.me.profile.address.clone()],
        subject: s.into(),
        body: "y".repeat(1000),
        ..Draft::default()
    };
    alice.send(&draft("one")).await.unwrap();
    alice.send(&draft("two")).await.unwrap();
    let err = alice.send(&draft("three")).await.unwrap_err();
    assert!(
        matches!(&err, letterme_client::ClientError::Api { status: 422, code, .. } if code == "quota_exceeded"),
        "{err}"
    );
    assert!(err.to_string().contains("mailbox of bob@x.test is full"));

    // Retention: nothing is purged before policy.retention_days (30) have passed.
    w.clock.advance(Duration::from_hours(29 * 24));
    assert_eq!(w.server.purge_now().await.unwrap().deliveries, 0);
    // (Tokens expired with the clock; log in again.)
    let bob = Unlocked::open(bob.me.dir.clone(), PASSPHRASE)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(bob.api.list(0).await.unwrap().len(), 2);
    w.clock.advance(Duration::from_hours(2 * 24));
    assert_eq!(w.server.purge_now().await.unwrap().deliveries, 2);
    let bob = Unlocked::open(bob.me.dir.clone(), PASSPHRASE)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert!(bob.api.list(0).await.unwrap().is_empty());
    // The purge freed the quota.
    let row = w
        .server
        .store
        .account("bob@x.test".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.usage_bytes, 0);
}

#[tokio::test]
async fn registration_is_for_our_domain_and_honours_invites() {
    let w = InProcess::start(|c| {
        c.registration.mode = letterme_server::config::RegistrationMode::Invite;
        c.registration.invites = vec!["inv-123".into()];
    })
    .await;
    let create = |local: &str, domain: &str, invite: Option<&'static str>| {
        let dir = ProfileDir(w.root.path().join(format!("{local}-{domain}")));
        let addr = Address::parse(&format!("{local}@{domain}")).unwrap();
        let url = w.url.clone();
        async move { letterme_client::create_account(&dir, &addr, &url, PASSPHRASE, invite).await }
    };
    let e = create("a", "x.test", None).await.unwrap_err();
    assert!(
        matches!(&e, letterme_client::ClientError::Api { status: 403, code, .. } if code == "invite_required"),
        "{e}"
    );
    let e = create("a", "x.test", Some("wrong")).await.unwrap_err();
    assert!(
        matches!(&e, letterme_client::ClientError::Api { status: 403, code, .. } if code == "invalid_invite"),
        "{e}"
    );
    create("a", "x.test", Some("inv-123")).await.unwrap();
    let e = create("b", "x.test", Some("inv-123")).await.unwrap_err();
    assert!(
        matches!(&e, letterme_client::ClientError::Api { status: 403, code, .. } if code == "invalid_invite"),
        "{e}"
    );
    let e = create("c", "other.test", Some("inv-123"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, letterme_client::ClientError::OtherDomain(..)),
        "{e}"
    );
}

#[tokio::test]
async fn bcc_recipients_are_hidden_from_the_others() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    alice
        .send(&Draft {
            to: vec![bob.me.profile.address.clone()],
            bcc: vec![carol.me.profile.address.clone()],
            subject: "s".into(),
            body: "b".into(),
            ..Draft::default()
        })
        .await
        .unwrap();
    bob.sync(&mut |_, _| {}).await.unwrap();
    carol.sync(&mut |_, _| {}).await.unwrap();
    let to_bob = &bob.me.list().unwrap()[0];
    assert!(to_bob.bcc.is_empty());
    let raw = bob.me.mailbox().unwrap().all().unwrap()[0].envelope.clone();
    assert!(
        !letterme_tests::contains(&raw, b"carol@x.test"),
        "bob's envelope does not name carol"
    );
    let to_carol = &carol.me.list().unwrap()[0];
    assert_eq!(to_carol.bcc, vec![carol.me.profile.address.clone()]);
    assert_eq!(to_carol.message_id, to_bob.message_id);
}

#[tokio::test]
async fn healthz_and_metrics() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    alice
        .send(&Draft {
            to: vec![bob.me.profile.address.clone()],
            subject: "s".into(),
            body: "b".into(),
            ..Draft::default()
        })
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let health: Value = http
        .get(format!("{}/healthz", w.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = http
        .get(format!("{}/metrics", w.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("letterme_deliveries_total 1"), "{metrics}");
    assert!(metrics.contains("letterme_accounts 2"), "{metrics}");
    assert!(
        metrics.contains("letterme_registrations_total 2"),
        "{metrics}"
    );
}

/// `POST /v1/messages/fetch` answers a page in one binary body: the same bytes as the
/// single-envelope GET, in the order asked, and a record saying "not pending" for an id
/// that is not the caller's.
#[tokio::test]
async fn a_page_downloads_in_one_request() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    for (to, subject) in [(&bob, "one"), (&carol, "for carol"), (&bob, "two")] {
        alice
            .send(&Draft {
                to: vec![to.me.profile.address.clone()],
                subject: subject.into(),
                body: "b".into(),
                ..Draft::default()
            })
            .await
            .unwrap();
    }
    let listed = bob.api.list(0).await.unwrap();
    assert_eq!(listed.len(), 2);
    let carols = carol.api.list(0).await.unwrap()[0].id.clone();
    let ids = vec![listed[1].id.clone(), carols, listed[0].id.to_uppercase()];
    let got = bob.api.fetch_many(&ids).await.unwrap();
    assert_eq!(got.len(), 3);
    for (record, entry) in [(&got[0], &listed[1]), (&got[2], &listed[0])] {
        assert_eq!(letterme_protocol::codec::hex(&record.id), entry.id);
        assert_eq!(record.received, entry.received);
        assert_eq!(
            record.envelope.as_deref(),
            Some(bob.api.fetch(&entry.id).await.unwrap().as_slice())
        );
    }
    assert_eq!(
        got[1].envelope, None,
        "another user's envelope is not served"
    );
    // And a sync through it stores both.
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.fetched, 2);
    assert!(bob.api.list(0).await.unwrap().is_empty());
}

/// A sync cuts its pages by bytes as well as by count, so large messages come a few per
/// page (two pages in memory at once, never a whole listing): five messages of 1.5 MB make
/// several pages, every one stored, then acknowledged.
#[tokio::test]
async fn a_sync_of_large_messages_goes_in_several_pages() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    for i in 0..5 {
        alice
            .send(&Draft {
                to: vec![bob.me.profile.address.clone()],
                subject: format!("large {i}"),
                body: format!("{i}").repeat(1_500_000),
                ..Draft::default()
            })
            .await
            .unwrap();
    }
    let mut calls = Vec::new();
    let report = bob
        .sync(&mut |done, total| calls.push((done, total)))
        .await
        .unwrap();
    assert_eq!(report.fetched, 5, "{:?}", report.refused);
    assert!(calls.len() >= 2, "one page for 7.5 MB: {calls:?}");
    assert_eq!(calls.last().map(|c| c.0), Some(5));
    assert!(bob.api.list(0).await.unwrap().is_empty());
    let mut subjects: Vec<String> = bob
        .me
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.subject)
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["large 0", "large 1", "large 2", "large 3", "large 4"]
    );
}

#[tokio::test]
async fn long_poll_wakes_on_delivery() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    // Nothing pending: a plain list answers at once, empty.
    assert!(bob.api.list(0).await.unwrap().is_empty());
    let poll = {
        let api = bob.api.clone();
        tokio::spawn(async move { api.list_wait(0, 50).await })
    };
    // Give the poll time to be waiting on the server before the delivery commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice
        .send(&Draft {
            to: vec![bob.me.profile.address.clone()],
            subject: "wake up".into(),
            body: "b".into(),
            ..Draft::default()
        })
        .await
        .unwrap();
    // Woken by the commit: the poll answers with the message long before its 50 s wait
    // would have run out (a generous bound, not a latency measurement).
    let got = tokio::time::timeout(Duration::from_secs(25), poll)
        .await
        .expect("the long poll was not woken by the delivery")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender, "alice@x.test");
}

/// Login cannot be locked (issue 15.6): challenges are stateless, so asking for them from
/// hundreds of source addresses fills nothing; the addresses of one /24 share one budget
/// (`429` after its burst of 200), those of other prefixes are served, and a fresh login
/// still gets its token.
#[tokio::test]
async fn a_challenge_flood_from_hundreds_of_addresses_does_not_stop_a_fresh_login() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let url = format!("{}/v1/auth/challenge", w.url);
    let from = |src: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(src))
            .build()
            .unwrap()
    };
    let ask = |http: &reqwest::Client| {
        http.post(&url)
            .json(&serde_json::json!({ "address": "alice@x.test" }))
            .send()
    };
    // 250 addresses of 127.9.9.0/24, twice each: one prefix, one bucket (the fake clock
    // does not move, so nothing refills).
    let mut refused = 0;
    for i in 1..=250u8 {
        let http = from([127, 9, 9, i]);
        for _ in 0..2 {
            let status = ask(&http).await.unwrap().status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                refused += 1;
            } else {
                assert_eq!(status, StatusCode::OK);
            }
        }
    }
    assert_eq!(refused, 500 - 200, "one /24 gets one burst");
    // 300 more sources, each in a /24 of its own: all served.
    for i in 0..300u32 {
        let http = from([127, 10 + (i / 250) as u8, (i % 250) as u8, 1]);
        for _ in 0..3 {
            assert_eq!(ask(&http).await.unwrap().status(), StatusCode::OK);
        }
    }
    // The owner still logs in.
    let fresh = token(&alice, &w.url).await;
    assert!(fresh.starts_with("lm1_"), "{fresh}");
}

/// A blob (PROTOCOL.md §19a) uploads in chunks, each checked against the manifest the
/// upload declared: an upload cut off resumes with only the missing chunks, a chunk with a
/// flipped bit and an upload over the limit are refused with their own errors, and what
/// comes back opens to the file. Only its uploader sees it.
#[tokio::test]
async fn a_blob_uploads_in_checked_chunks_and_resumes() {
    use letterme_protocol::blob::{CHUNK, Opener, Sealer};
    let w = InProcess::start(|c| {
        c.limits.max_attachment_size = letterme_server::config::ByteSize(4 * 1024 * 1024);
    })
    .await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    assert_eq!(
        alice.api.server_info().await.unwrap().max_attachment_size,
        4 * 1024 * 1024
    );
    let file: Vec<u8> = (0..CHUNK * 5 / 2).map(|i| (i * 31 % 255) as u8).collect();
    let mut sealer = Sealer::new();
    let mut sealed = vec![
        sealer.seal_chunk(&file[..CHUNK]),
        sealer.seal_chunk(&file[CHUNK..2 * CHUNK]),
    ];
    let (last, reference, manifest) = sealer.finish(&file[2 * CHUNK..]);
    sealed.push(last);
    let size: u64 = sealed.iter().map(|c| c.len() as u64).sum();
    let hashes = manifest.0.concat();
    let id = reference.id.clone();

    let begun = alice.api.blob_begin(&id, size, &hashes).await.unwrap();
    assert_eq!((begun.chunks, begun.stored.len()), (3, 0));
    alice.api.blob_put(&id, 2, sealed[2].clone()).await.unwrap();
    // The connection breaks; the client asks where the upload stands, and sends the rest.
    let resumed = alice.api.blob_begin(&id, size, &hashes).await.unwrap();
    assert_eq!(resumed.stored, [2]);
    let mut flipped = sealed[0].clone();
    flipped[12_345] ^= 0x10;
    let refused = alice
        .api
        .blob_put(&id, 0, flipped)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("does not match the blob's manifest"),
        "{refused}"
    );
    let short = alice
        .api
        .blob_put(&id, 1, sealed[1][..100].to_vec())
        .await
        .unwrap_err();
    assert!(short.to_string().contains("chunk 1 is"), "{short}");
    for n in [0, 1] {
        alice
            .api
            .blob_put(&id, n, sealed[n as usize].clone())
            .await
            .unwrap();
    }
    assert_eq!(alice.api.blob_status(&id).await.unwrap().stored, [0, 1, 2]);

    let mut opener = Opener::new(&reference).unwrap();
    let mut back = Vec::new();
    for n in 0..2 {
        back.extend(
            opener
                .open_chunk(&alice.api.blob_chunk(&id, n).await.unwrap())
                .unwrap(),
        );
    }
    back.extend(
        opener
            .finish(&alice.api.blob_chunk(&id, 2).await.unwrap())
            .unwrap(),
    );
    assert_eq!(back, file);

    // Not bob's: he can neither see nor read it. Holding its chunks, he may offer them (the
    // same id is the same bytes, checked against the manifest): that changes nothing.
    for r in [
        bob.api.blob_status(&id).await.map(drop),
        bob.api.blob_chunk(&id, 0).await.map(drop),
    ] {
        assert!(
            matches!(r, Err(ClientError::Api { status: 404, .. })),
            "{r:?}"
        );
    }
    assert_eq!(
        bob.api
            .blob_put(&id, 0, sealed[0].clone())
            .await
            .unwrap()
            .stored,
        [0, 1, 2]
    );
    assert_eq!(
        bob.api.blob_begin(&id, size, &hashes).await.unwrap().stored,
        [0, 1, 2]
    );
    assert!(
        bob.api.blob_status(&id).await.is_err(),
        "still not bob's to read"
    );
    // A manifest that is not the id's, and a blob over the server's limit.
    let mut wrong = hashes.clone();
    wrong[0] ^= 1;
    let e = alice
        .api
        .blob_begin(&id, size, &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not hash to the blob's id"), "{e}");
    let big = 5 * letterme_protocol::blob::SEALED_CHUNK as u64;
    let e = alice
        .api
        .blob_begin(&id, big, &hashes)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("accepts at most 4194304"), "{e}");

    // Named by a message to bob, the blob is his to read while the message is pending for
    // him — not carol's — and goes once he has acknowledged it.
    let carol = w.user("carol").await;
    let bob_addr = bob.me.profile.address.clone();
    let key = alice
        .verified_keys(&bob_addr)
        .await
        .unwrap()
        .attestation
        .encryption_key;
    let env = letterme_tests::sealed_with_blobs(
        &alice,
        &bob_addr,
        key,
        "the file",
        "attached",
        "<blob-1@x.test>",
        vec![reference.clone()],
    );
    assert_eq!(env.encode()[5], 2);
    let envelope_len = env.encode().len() as u64;
    alice.api.send(env.encode()).await.unwrap();
    // Listed at what fetching it all costs: the envelope and the blob.
    assert_eq!(bob.api.list(0).await.unwrap()[0].size, envelope_len + size);
    assert_eq!(bob.api.blob_status(&id).await.unwrap().stored, [0, 1, 2]);
    assert_eq!(
        bob.api.blob_chunk(&id, 1).await.unwrap(),
        alice.api.blob_chunk(&id, 1).await.unwrap()
    );
    assert!(matches!(
        carol.api.blob_chunk(&id, 0).await,
        Err(ClientError::Api { status: 404, .. })
    ));
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!(report.fetched, 1);
    let mut left = true;
    for _ in 0..200 {
        left = alice.api.blob_status(&id).await.is_ok();
        if !left {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!left, "the blob outlived the message's acknowledgement");
    assert!(matches!(
        bob.api.blob_chunk(&id, 0).await,
        Err(ClientError::Api { status: 404, .. })
    ));
    // An envelope naming a blob that is not uploaded is refused whole.
    let missing = letterme_protocol::blob::BlobRef {
        id: letterme_protocol::blob::BlobId([3; 32]).to_hex(),
        ..reference
    };
    let env = letterme_tests::sealed_with_blobs(
        &alice,
        &bob_addr,
        key,
        "the file",
        "attached",
        "<blob-2@x.test>",
        vec![missing],
    );
    let e = alice.api.send(env.encode()).await.unwrap_err().to_string();
    assert!(e.contains("which is not here"), "{e}");
}

/// A sender's own client can write any entity: one that puts a blob in twice (a large blob
/// repeated without end would exhaust the reader) or leaves one out is refused at sync,
/// never shown, and acknowledged so that it does not come back.
#[tokio::test]
async fn a_message_that_repeats_or_hides_a_blob_is_refused() {
    use letterme_protocol::blob::Sealer;
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let bob_addr = bob.me.profile.address.clone();
    let key = alice
        .verified_keys(&bob_addr)
        .await
        .unwrap()
        .attestation
        .encryption_key;
    for placements in [vec!["0", "0"], vec![]] {
        let (last, reference, manifest) = Sealer::new().finish(b"the blob's body");
        alice
            .api
            .blob_begin(&reference.id, last.len() as u64, &manifest.0.concat())
            .await
            .unwrap();
        alice.api.blob_put(&reference.id, 0, last).await.unwrap();
        let mut entity = "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n".to_owned();
        for n in &placements {
            entity += "--b\r\n";
            entity += letterme_client::mime::BLOB_FIELD;
            entity += ": ";
            entity += n;
            entity += "\r\nContent-Type: a/b\r\n\r\n\r\n";
        }
        entity.push_str("--b--\r\n");
        let p = Payload {
            mime: Some(entity.into_bytes()),
            blobs: vec![reference],
            ..payload(&alice.me.profile.address, &bob_addr, "made up")
        };
        let env = seal(
            SignerKind::User,
            &alice.me.keys.device,
            &p,
            &[(bob_addr.clone(), key)],
            letterme_client::now(),
        )
        .unwrap();
        alice.api.send(env.encode()).await.unwrap();
        let report = bob.sync(&mut |_, _| {}).await.unwrap();
        assert_eq!(report.fetched, 0, "{placements:?}");
        assert_eq!(report.refused.len(), 1, "{placements:?}");
        assert!(
            report.refused[0].1.contains("exactly once"),
            "{:?}",
            report.refused
        );
        assert!(bob.api.list(0).await.unwrap().is_empty());
    }
}

/// A file of a chunk and a half (its bytes from `step`), sealed and uploaded by `online` as
/// a blob: the file, the blob's reference and its first sealed chunk.
async fn two_chunk_blob(
    online: &letterme_client::Online,
    step: usize,
) -> (Vec<u8>, letterme_protocol::blob::BlobRef, Vec<u8>) {
    use letterme_protocol::blob::{CHUNK, Sealer};
    let file: Vec<u8> = (0..CHUNK * 3 / 2).map(|i| (i * step % 251) as u8).collect();
    let mut sealer = Sealer::new();
    let first = sealer.seal_chunk(&file[..CHUNK]);
    let (last, reference, manifest) = sealer.finish(&file[CHUNK..]);
    let size = (first.len() + last.len()) as u64;
    online
        .api
        .blob_begin(&reference.id, size, &manifest.0.concat())
        .await
        .unwrap();
    online
        .api
        .blob_put(&reference.id, 0, first.clone())
        .await
        .unwrap();
    online.api.blob_put(&reference.id, 1, last).await.unwrap();
    (file, reference, first)
}

/// The attachments of `online`'s message `id`, saved one after the other into one buffer.
fn attachments_of(online: &letterme_client::Online, id: &str) -> Vec<u8> {
    let mut saved = Vec::new();
    online
        .me
        .save_attachments(id, |_, _, write| {
            write(&mut saved)?;
            Ok(())
        })
        .unwrap();
    saved
}

/// A chunk kept from a download broken off, damaged on disk since, does not cost the
/// message: the next sync finds it does not open, drops what it kept of that attachment
/// and downloads it again (DECISIONS D75).
#[tokio::test]
async fn a_kept_chunk_damaged_on_disk_is_downloaded_again() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let bob_addr = bob.me.profile.address.clone();
    let key = alice
        .verified_keys(&bob_addr)
        .await
        .unwrap()
        .attestation
        .encryption_key;
    let (file, reference, first) = two_chunk_blob(&alice, 13).await;
    let env = letterme_tests::sealed_with_blobs(
        &alice,
        &bob_addr,
        key,
        "the file",
        "attached",
        "<damaged-1@x.test>",
        vec![reference.clone()],
    );
    alice.api.send(env.encode()).await.unwrap();
    // Chunk 0 was kept by a download broken off, and a bit of it flipped since.
    let mut damaged = first;
    damaged[1000] ^= 1;
    bob.me
        .cache
        .keep_chunks(&reference.id, &[(0, damaged)])
        .unwrap();

    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(report.fetched, 1);
    let list = bob.me.list().unwrap();
    let saved = attachments_of(&bob, &list[0].id);
    assert_eq!(saved, file);
}

/// Anyone who knows a blob's id can name it in an envelope (a co-recipient does): one
/// naming bob's kept blob with a wrong key is refused, and what bob kept of it stays, so
/// the genuine message still opens (DECISIONS D75).
#[tokio::test]
async fn a_wrong_key_for_a_kept_blob_refuses_that_message_only() {
    let w = InProcess::start(|_| {}).await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    let bob_addr = bob.me.profile.address.clone();
    let carol_addr = carol.me.profile.address.clone();
    let (file, reference, _) = two_chunk_blob(&alice, 7).await;
    // To bob, and to carol, who has not read hers yet: the blob stays on the server.
    for to in [&bob_addr, &carol_addr] {
        let key = alice
            .verified_keys(to)
            .await
            .unwrap()
            .attestation
            .encryption_key;
        let env = letterme_tests::sealed_with_blobs(
            &alice,
            to,
            key,
            "the file",
            "attached",
            &format!("<genuine-{}@x.test>", to.local_part()),
            vec![reference.clone()],
        );
        alice.api.send(env.encode()).await.unwrap();
    }
    assert_eq!(bob.sync(&mut |_, _| {}).await.unwrap().fetched, 1);

    // Carol names the same blob to bob, with another key.
    let mut wrong = reference.clone();
    wrong.key = [9; 32];
    let key = carol
        .verified_keys(&bob_addr)
        .await
        .unwrap()
        .attestation
        .encryption_key;
    let env = letterme_tests::sealed_with_blobs(
        &carol,
        &bob_addr,
        key,
        "the same file?",
        "attached",
        "<wrong-key@x.test>",
        vec![wrong],
    );
    carol.api.send(env.encode()).await.unwrap();
    let report = bob.sync(&mut |_, _| {}).await.unwrap();
    assert_eq!((report.fetched, report.refused.len()), (0, 1), "{report:?}");

    let list = bob.me.list().unwrap();
    assert_eq!(list.len(), 1);
    let saved = attachments_of(&bob, &list[0].id);
    assert_eq!(saved, file, "the genuine message lost its attachment");
}
