//! A typed client for the native server's HTTP/JSON API (`docs/API.md`).

use std::time::Duration;

use letterme_protocol::auth::sign_challenge;
use letterme_protocol::{Address, Attestation, IdentityPublicKey, KeyBinding, SigningKeypair, b64};
use reqwest::{Method, RequestBuilder, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::ClientError;

/// `GET /v1/server`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerInfo {
    pub domain: String,
    pub domain_key: IdentityPublicKey,
    pub protocol: u32,
    pub max_message_size: u64,
    pub quota: u64,
    /// `relay`, `notice` or `off`: what the server does with mail for ordinary addresses.
    #[serde(default = "off")]
    pub outbound: String,
}

fn off() -> String {
    "off".into()
}

#[derive(Debug, Deserialize)]
pub struct RegisterResponse {
    pub attestation: Attestation,
    pub domain_key: IdentityPublicKey,
}

#[derive(Debug, Deserialize)]
pub struct KeyLookup {
    pub address: Address,
    pub found: bool,
    pub attestation: Option<Attestation>,
    /// The domain does not run letter.me: mail to it leaves as ordinary email, if at all.
    #[serde(default)]
    pub legacy: bool,
    /// Key-transparency proofs (keys of the server's own domain).
    #[serde(default)]
    pub kt: Option<letterme_protocol::kt::KtProof>,
}

/// `POST /v1/outbound`'s answer.
#[derive(Debug, Deserialize)]
pub struct OutboundResponse {
    pub id: i64,
    pub mode: String,
    pub queued: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListEntry {
    pub id: String,
    pub seq: i64,
    pub sender: String,
    pub size: u64,
    pub received: u64,
}

#[derive(Debug, Deserialize)]
struct ListResponse {
    messages: Vec<ListEntry>,
}

#[derive(Debug, Deserialize)]
pub struct SendResponse {
    pub id: String,
    pub size: u64,
}

/// Talks to one server, optionally logged in.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_mins(2))
            .build()
            .expect("a default HTTP client builds");
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token: None,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn call(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let resp = req.send().await.map_err(|e| ClientError::ServerDown {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        let message = body["error"]["message"].as_str().map_or_else(
            || status.canonical_reason().unwrap_or("error").to_owned(),
            ToOwned::to_owned,
        );
        Err(ClientError::Api {
            url: self.base.clone(),
            status: status.as_u16(),
            code,
            message,
        })
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ClientError> {
        let resp = self.call(req).await?;
        resp.json().await.map_err(|e| ClientError::ServerDown {
            url: self.base.clone(),
            reason: format!("unexpected answer: {e}"),
        })
    }

    /// `POST path` with a JSON body (with the login token, when logged in), as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.json(self.req(Method::POST, path).json(body)).await
    }

    /// `GET path` (with the login token, when logged in) as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.json(self.req(Method::GET, path)).await
    }

    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        self.json(self.req(Method::GET, "/v1/server")).await
    }

    pub async fn register(
        &self,
        binding: &KeyBinding,
        invite: Option<&str>,
    ) -> Result<RegisterResponse, ClientError> {
        self.json(
            self.req(Method::POST, "/v1/accounts")
                .json(&json!({ "binding": binding, "invite": invite })),
        )
        .await
    }

    /// `POST /v1/keys/rotate` (or `/revoke`): the server attests the new key and logs it.
    pub async fn change_key(
        &self,
        binding: &KeyBinding,
        revoke: bool,
    ) -> Result<(Attestation, u64), ClientError> {
        #[derive(Deserialize)]
        struct Changed {
            attestation: Attestation,
            index: u64,
        }
        let path = if revoke {
            "/v1/keys/revoke"
        } else {
            "/v1/keys/rotate"
        };
        let r: Changed = self
            .json(
                self.req(Method::POST, path)
                    .json(&json!({ "binding": binding })),
            )
            .await?;
        Ok((r.attestation, r.index))
    }

    /// `GET /v1/kt/mine`: every log entry under our own label.
    pub async fn kt_mine(
        &self,
        since: Option<u64>,
    ) -> Result<letterme_protocol::kt::KtHistory, ClientError> {
        let path = match since {
            Some(n) => format!("/v1/kt/mine?since={n}"),
            None => "/v1/kt/mine".to_owned(),
        };
        self.json(self.req(Method::GET, &path)).await
    }

    /// Challenge, sign, token.
    pub async fn login(
        &mut self,
        domain: &str,
        address: &Address,
        key: &SigningKeypair,
    ) -> Result<(), ClientError> {
        #[derive(Deserialize)]
        struct Challenge {
            challenge: String,
        }
        #[derive(Deserialize)]
        struct Token {
            token: String,
        }
        let c: Challenge = self
            .json(
                self.req(Method::POST, "/v1/auth/challenge")
                    .json(&json!({ "address": address })),
            )
            .await?;
        let challenge: [u8; 32] =
            b64::decode_array(&c.challenge).ok_or_else(|| ClientError::ServerDown {
                url: self.base.clone(),
                reason: "malformed challenge".into(),
            })?;
        let sig = sign_challenge(key, domain, address, &challenge);
        let t: Token = self
            .json(self.req(Method::POST, "/v1/auth/token").json(&json!({
                "address": address, "challenge": c.challenge, "signature": sig,
            })))
            .await?;
        self.token = Some(t.token);
        Ok(())
    }

    /// `since`: the size of the last checkpoint accepted for the address's domain.
    pub async fn lookup(
        &self,
        address: &Address,
        since: Option<u64>,
    ) -> Result<KeyLookup, ClientError> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/keys/", self.base)).map_err(|e| {
            ClientError::ServerDown {
                url: self.base.clone(),
                reason: e.to_string(),
            }
        })?;
        url.path_segments_mut()
            .map_err(|()| ClientError::ServerDown {
                url: self.base.clone(),
                reason: "not a base URL".into(),
            })?
            .pop_if_empty()
            .push(address.as_str());
        if let Some(n) = since {
            url.query_pairs_mut().append_pair("since", &n.to_string());
        }
        let mut r = self.http.get(url);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        self.json(r).await
    }

    pub async fn send(&self, envelope: Vec<u8>) -> Result<SendResponse, ClientError> {
        self.json(
            self.req(Method::POST, "/v1/messages")
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/vnd.letterme.envelope",
                )
                .body(envelope),
        )
        .await
    }

    /// Hands mail for ordinary addresses to the server: the RFC 5322 message in relay mode,
    /// `None` (recipients only) in notice mode.
    pub async fn send_outbound(
        &self,
        recipients: &[Address],
        message: Option<&[u8]>,
    ) -> Result<OutboundResponse, ClientError> {
        let mut body = json!({ "recipients": recipients });
        if let Some(m) = message {
            body["message"] = json!(b64::encode(m));
        }
        self.json(self.req(Method::POST, "/v1/outbound").json(&body))
            .await
    }

    /// Long poll: like [`Api::list`], but when nothing is pending the server waits up to
    /// `wait_secs` for new mail before answering.
    pub async fn list_wait(
        &self,
        after: i64,
        wait_secs: u64,
    ) -> Result<Vec<ListEntry>, ClientError> {
        let r: ListResponse = self
            .json(
                self.req(Method::GET, "/v1/messages")
                    .query(&[("after", after)])
                    .query(&[("wait", wait_secs)])
                    .timeout(Duration::from_secs(wait_secs + 30)),
            )
            .await?;
        Ok(r.messages)
    }

    pub async fn list(&self, after: i64) -> Result<Vec<ListEntry>, ClientError> {
        let r: ListResponse = self
            .json(
                self.req(Method::GET, "/v1/messages")
                    .query(&[("after", after)]),
            )
            .await?;
        Ok(r.messages)
    }

    pub async fn fetch(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self
            .call(self.req(Method::GET, &format!("/v1/messages/{id}")))
            .await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::ServerDown {
                url: self.base.clone(),
                reason: describe(&e),
            })
    }

    /// The logged-in user's block list.
    pub async fn blocks(&self) -> Result<Vec<String>, ClientError> {
        let v: Value = self.json(self.req(Method::GET, "/v1/blocks")).await?;
        Ok(v["blocks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(ToOwned::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Blocks (`add`) or unblocks an address or `@domain`; returns the normalized entry
    /// and whether anything changed.
    pub async fn set_block(&self, entry: &str, add: bool) -> Result<(String, bool), ClientError> {
        let method = if add { Method::POST } else { Method::DELETE };
        let v: Value = self
            .json(
                self.req(method, "/v1/blocks")
                    .json(&json!({ "entry": entry })),
            )
            .await?;
        Ok((
            v["entry"].as_str().unwrap_or(entry).to_owned(),
            v["changed"].as_bool().unwrap_or(false),
        ))
    }

    /// Acknowledges several messages at once (`POST /v1/messages/ack`, at most 1000 ids).
    pub async fn ack_many(&self, ids: &[String]) -> Result<(), ClientError> {
        for chunk in ids.chunks(1000) {
            self.call(
                self.req(Method::POST, "/v1/messages/ack")
                    .json(&serde_json::json!({ "ids": chunk })),
            )
            .await?;
        }
        Ok(())
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused or unreachable".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s = format!("{s}: {inner}");
            src = inner.source();
        }
        s
    }
}
