//! Every API request and answer type against its exact wire form (golden JSON), so the
//! server and the client, which share these types, cannot drift from `docs/API.md` either:
//! a renamed, reordered or retyped field fails here. Requests refuse unknown fields;
//! answers tolerate them and unknown enum values.

#![allow(clippy::unwrap_used)]

use letterme_protocol::api::kt;
use letterme_protocol::api::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Parses `json` as `T` and writes it back byte for byte.
fn golden<T: Serialize + DeserializeOwned>(json: &str) -> T {
    let v: T = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(serde_json::to_string(&v).unwrap(), json);
    v
}

/// `json` with one more member in its top-level object.
fn with_unknown_field(json: &str) -> String {
    format!("{},\"surprise\":1}}", &json[..json.len() - 1]).replace("{,", "{")
}

/// A request: its golden form, and refused with an unknown field.
fn request<T: Serialize + DeserializeOwned>(json: &str) -> T {
    let v = golden::<T>(json);
    let extra = with_unknown_field(json);
    assert!(
        serde_json::from_str::<T>(&extra).is_err(),
        "an unknown field must be refused: {extra}"
    );
    v
}

/// An answer: its golden form, and still read with an unknown field.
fn answer<T: Serialize + DeserializeOwned>(json: &str) -> T {
    let v = golden::<T>(json);
    let extra = with_unknown_field(json);
    serde_json::from_str::<T>(&extra)
        .unwrap_or_else(|e| panic!("an answer must tolerate unknown fields: {extra}: {e}"));
    v
}

#[test]
fn requests_round_trip_and_refuse_unknown_fields() {
    request::<RegisterRequest>(
        r#"{"binding":{"address":"alice@a.test","identity_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","encryption_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":1767225600,"signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"invite":"tok"}"#,
    );
    request::<RegisterRequest>(
        r#"{"binding":{"address":"alice@a.test","identity_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","encryption_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":1767225600,"signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"invite":null}"#,
    );
    request::<ChallengeRequest>(r#"{"address":"alice@a.test"}"#);
    request::<TokenRequest>(
        r#"{"address":"alice@a.test","challenge":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}"#,
    );
    request::<KeyChangeRequest>(
        r#"{"binding":{"address":"alice@a.test","identity_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","encryption_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":1767225600,"signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}}"#,
    );
    request::<AckRequest>(r#"{"ids":["3f0c9a1e5b7d2c4f8e6a0b1d3c5e7f90"]}"#);
    request::<FetchRequest>(r#"{"ids":["3f0c9a1e5b7d2c4f8e6a0b1d3c5e7f90"]}"#);
    request::<BlobBegin>(
        r#"{"id":"3f0c9a1e5b7d2c4f8e6a0b1d3c5e7f903f0c9a1e5b7d2c4f8e6a0b1d3c5e7f90","size":1048592,"manifest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
    );
    request::<BlockRequest>(r#"{"entry":"@example.net"}"#);
    request::<OutboundRequest>(r#"{"message":"RnJvbTogYQ==","recipients":["carol@example.net"]}"#);
    request::<OutboundRequest>(r#"{"recipients":["carol@example.net"]}"#);
    request::<kt::WitnessRequest>(
        r#"{"checkpoint":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}}"#,
    );
}

#[test]
fn queries_round_trip_and_refuse_unknown_parameters() {
    request::<LookupQuery>(r#"{"since":3}"#);
    request::<LookupQuery>(r"{}");
    request::<ListQuery>(r#"{"after":5,"limit":100,"wait":50}"#);
    request::<ListQuery>(r#"{"after":0}"#);
    request::<kt::ConsistencyQuery>(r#"{"from":2}"#);
    request::<kt::EntriesQuery>(r#"{"domain":"b.test","start":0,"limit":10}"#);
    request::<kt::EntriesQuery>(r#"{"start":7}"#);
}

#[test]
fn answers_round_trip_and_tolerate_unknown_fields() {
    answer::<Health>(r#"{"status":"ok"}"#);
    answer::<BlobState>(
        r#"{"id":"3f0c9a1e5b7d2c4f8e6a0b1d3c5e7f903f0c9a1e5b7d2c4f8e6a0b1d3c5e7f90","size":1048592,"chunks":1,"stored":[0],"manifest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
    );
    answer::<ServerInfo>(
        r#"{"domain":"localhost","domain_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","protocol":1,"max_message_size":25000000,"quota":1000000000,"max_attachment_size":500000000,"retention_days":30,"registration":"open","outbound":"off"}"#,
    );
    answer::<ServerInfo>(
        r#"{"domain":"localhost","domain_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","protocol":1,"max_message_size":25000000,"quota":1000000000,"max_attachment_size":500000000,"retention_days":30,"registration":"invite","outbound":"relay"}"#,
    );
    answer::<ServerInfo>(
        r#"{"domain":"localhost","domain_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","protocol":1,"max_message_size":25000000,"quota":1000000000,"max_attachment_size":500000000,"retention_days":30,"registration":"open","outbound":"notice"}"#,
    );
    // From a server before `retention_days`: read as 0, "not said".
    let older: ServerInfo = serde_json::from_str(
        r#"{"domain":"localhost","domain_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","protocol":1,"max_message_size":25000000,"quota":1000000000,"registration":"open","outbound":"off"}"#,
    )
    .unwrap();
    assert_eq!((older.retention_days, older.max_attachment_size), (0, 0));
    answer::<RegisterResponse>(
        r#"{"attestation":{"address":"alice@a.test","identity_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","encryption_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":1767225600,"version":1,"binding_signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"domain_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
    );
    answer::<ChallengeResponse>(
        r#"{"challenge":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","domain":"localhost","expires":1767225720}"#,
    );
    answer::<TokenResponse>(r#"{"expires":1767226500,"token":"lm1_abc"}"#);
    answer::<KeyLookup>(
        r#"{"address":"bob@a.test","found":true,"attestation":{"address":"alice@a.test","identity_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","encryption_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":1767225600,"version":1,"binding_signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"kt":{"index":2,"entry":"AQID","label_proof":"BAU=","inclusion":"","checkpoint":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}},"legacy":false}"#,
    );
    answer::<KeyLookup>(
        r#"{"address":"carol@example.net","found":false,"attestation":null,"kt":null,"legacy":true}"#,
    );
    answer::<KeyChangeResponse>(
        r#"{"attestation":{"address":"alice@a.test","identity_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","encryption_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created":1767225600,"version":1,"binding_signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"index":4}"#,
    );
    answer::<SendResponse>(
        r#"{"id":"3f0c9a1e5b7d2c4f8e6a0b1d3c5e7f90","size":1234,"recipients":["bob@a.test"],"queued":["dave@b.test"]}"#,
    );
    answer::<ListResponse>(
        r#"{"messages":[{"id":"3f0c9a1e5b7d2c4f8e6a0b1d3c5e7f90","seq":7,"sender":"alice@a.test","size":1234,"received":1767225600}]}"#,
    );
    answer::<AckResponse>(r#"{"deleted":2}"#);
    answer::<BlocksResponse>(r#"{"blocks":["@example.net","spammer@example.com"]}"#);
    answer::<BlockChange>(r#"{"changed":true,"entry":"@example.net"}"#);
    answer::<OutboundResponse>(
        r#"{"id":17,"mode":"relay","queued":["carol@example.net","dave@example.org"]}"#,
    );
    answer::<OutboundResponse>(r#"{"id":18,"mode":"notice","queued":["carol@example.net"]}"#);
    answer::<kt::CheckpointResponse>(
        r#"{"checkpoint":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
    );
    answer::<kt::ConsistencyResponse>(
        r#"{"checkpoint":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"proof":"AQID"}"#,
    );
    answer::<kt::EntriesPage>(
        r#"{"checkpoint":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"entries":["AQID","BAU="],"start":0}"#,
    );
    answer::<kt::FederationConsistency>(
        r#"{"checkpoint":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"proofs":["AQID",""]}"#,
    );
    answer::<kt::WitnessVerdict>(
        r#"{"verdict":"consistent","checkpoint":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="}}"#,
    );
    answer::<kt::WitnessVerdict>(
        r#"{"verdict":"fork","held":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"other":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"reason":"two roots for size 3"}"#,
    );
    answer::<kt::Witnessed>(
        r#"{"checkpoint":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"domain":"b.test","forks":[{"detected_at":1767225600,"held":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"other":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"reason":"two roots for size 3","source":"a key lookup"}]}"#,
    );
    answer::<kt::Witnessed>(r#"{"checkpoint":null,"domain":"b.test","forks":[]}"#);
    answer::<letterme_protocol::kt::KtHistory>(
        r#"{"label_proof":"BAU=","entries":[{"index":0,"entry":"AQID","inclusion":""}],"checkpoint":{"domain":"a.test","size":3,"root":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","time":1767225600,"vrf_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","signature":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="},"consistency":"BgcI"}"#,
    );
    answer::<ErrorBody>(
        r#"{"error":{"code":"not_found","message":"no such endpoint; see docs/API.md"}}"#,
    );
    answer::<ErrorBody>(
        r#"{"error":{"code":"unknown_recipients","message":"no such user: zed@localhost","recipients":["zed@localhost"]}}"#,
    );
    answer::<ErrorBody>(
        r#"{"error":{"code":"too_large","limit":65536,"message":"the request body is larger than this server accepts (65536 bytes)"}}"#,
    );
    answer::<ErrorBody>(
        r#"{"error":{"code":"rate_limited","limit":"user","message":"too many requests; slow down and retry"}}"#,
    );
    answer::<ErrorBody>(
        r#"{"error":{"code":"rate_limited","domain":"example.net","limit":"domain","message":"too much mail to example.net right now; retry later"}}"#,
    );
}

#[test]
fn error_codes_keep_their_wire_strings() {
    let body: ErrorBody = answer(r#"{"error":{"code":"expired_token","message":"log in again"}}"#);
    assert_eq!(body.error.code, ErrorCode::ExpiredToken);
    for code in ErrorCode::KNOWN {
        let wire = serde_json::to_string(code).unwrap();
        assert_eq!(wire, format!("\"{}\"", code.as_str()));
        assert_eq!(&serde_json::from_str::<ErrorCode>(&wire).unwrap(), code);
        assert_eq!(ErrorCode::parse(code.as_str()), *code);
    }
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        ErrorCode::KNOWN.iter().all(|c| seen.insert(c.as_str())),
        "a wire string used twice"
    );
}

#[test]
fn an_unknown_error_code_is_kept_not_refused() {
    let body: ErrorBody =
        answer(r#"{"error":{"code":"brand_new_code","message":"from a newer server"}}"#);
    assert_eq!(body.error.code, ErrorCode::Other("brand_new_code".into()));
    assert_eq!(body.error.code.as_str(), "brand_new_code");
    // Unknown detail values do not cost the code either.
    let body: ErrorBody = serde_json::from_str(
        r#"{"error":{"code":"rate_limited","limit":"galaxy","message":"m","extra":[1]}}"#,
    )
    .unwrap();
    assert_eq!(body.error.code, ErrorCode::RateLimited);
    assert_eq!(body.error.limit, None);
}

#[test]
fn answers_from_other_versions_still_parse() {
    // A server that predates `registration` and `outbound`, or has a mode this build
    // does not know: read as open / off, as the client always did.
    let info: ServerInfo = serde_json::from_str(&format!(
        r#"{{"domain":"localhost","domain_key":"{}","protocol":1,"max_message_size":1,"quota":2}}"#,
        "A".repeat(43) + "="
    ))
    .unwrap();
    assert_eq!(info.outbound, OutboundMode::Off);
    assert_eq!(info.registration, RegistrationMode::Open);
    let info: ServerInfo = serde_json::from_str(&format!(
        r#"{{"domain":"localhost","domain_key":"{}","protocol":1,"max_message_size":1,"quota":2,"registration":"vouched","outbound":"carrier-pigeon"}}"#,
        "A".repeat(43) + "="
    ))
    .unwrap();
    assert_eq!(info.outbound, OutboundMode::Off);
    let v: kt::WitnessVerdict = serde_json::from_str(r#"{"verdict":"pondering"}"#).unwrap();
    assert_eq!(v, kt::WitnessVerdict::Unknown);
    assert_eq!(v.as_str(), "unknown");
}

/// The binary answer of `POST /v1/messages/fetch`, byte for byte as docs/API.md gives it.
#[test]
fn fetched_envelopes_have_one_binary_form() {
    let records = vec![
        FetchedEnvelope {
            id: [0xab; 16],
            received: 1_767_225_600,
            envelope: Some(b"LMEV".to_vec()),
        },
        FetchedEnvelope {
            id: [0xcd; 16],
            received: 0,
            envelope: None,
        },
    ];
    let mut w = letterme_protocol::codec::Writer::new();
    for r in &records {
        r.encode_into(&mut w);
    }
    let bytes = w.into_bytes();
    let mut expected = vec![0xab; 16];
    expected.extend(1_767_225_600u64.to_be_bytes());
    expected.extend([1, 0, 0, 0, 4]);
    expected.extend(b"LMEV");
    expected.extend([0xcd; 16]);
    expected.extend([0; 8]);
    expected.push(0);
    assert_eq!(bytes, expected);
    assert_eq!(FetchedEnvelope::decode_all(&bytes, 4).unwrap(), records);
    // Cut anywhere, too long, or with a bad presence byte: refused, never half read.
    for cut in 1..bytes.len() {
        if cut != 33 {
            assert!(
                FetchedEnvelope::decode_all(&bytes[..cut], 4).is_err(),
                "cut at {cut}"
            );
        }
    }
    assert!(FetchedEnvelope::decode_all(&bytes, 3).is_err());
    let mut bad = bytes.clone();
    bad[24] = 2;
    assert!(FetchedEnvelope::decode_all(&bad, 4).is_err());
}
