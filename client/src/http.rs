//! A typed client for the native server's HTTP/JSON API (`docs/API.md`).

use std::time::Duration;

use letterme_protocol::api::kt::{EntriesPage, EntriesQuery, WitnessRequest, WitnessVerdict};
use letterme_protocol::api::{
    AckRequest, AddDevicesRequest, BlobBegin, BlockChange, BlockRequest, BlocksResponse,
    ChallengeRequest, ChallengeResponse, ErrorBody, ErrorCode, FetchRequest, KeyChangeRequest,
    KeyChangeResponse, LinkMessage, LinkMessages, LinkOpened, LinkQuery, ListQuery, ListResponse,
    LookupQuery, OutboundRequest, RegisterRequest, SendQuery, TokenRequest, TokenResponse,
};
/// The answers this client hands to its callers, under the paths they always had.
pub use letterme_protocol::api::{
    BlobState, DeviceInfo, DeviceList, FetchedEnvelope, KeyLookup, ListEntry, OutboundResponse,
    RegisterResponse, SendResponse, ServerInfo,
};
use letterme_protocol::auth::sign_challenge;
use letterme_protocol::codec::hex;
use letterme_protocol::device::Device;
use letterme_protocol::kt::Checkpoint;
use letterme_protocol::{Address, Attestation, KeyBinding, SigningKeypair, b64};
use reqwest::{Method, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ClientError;

/// Talks to one server, optionally logged in. Clones share the login: logging in again
/// on one (after the server restarted, say) serves them all.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    token: std::sync::Arc<std::sync::RwLock<Option<String>>>,
    /// `http://` to a host that is not this machine: every call is refused.
    plaintext_remote: bool,
}

/// Whether `base` is plain `http://` to anything but loopback (`localhost`, 127/8, ::1).
fn plaintext_remote(base: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(base) else {
        return false;
    };
    if url.scheme() != "http" {
        return false;
    }
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    !loopback
}

impl Api {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_mins(2))
            .pool_idle_timeout(letterme_protocol::net::POOL_IDLE)
            .build()
            .expect("a default HTTP client builds");
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token: std::sync::Arc::default(),
            plaintext_remote: plaintext_remote(base),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.with_token(self.http.request(method, format!("{}{path}", self.base)))
    }

    fn with_token(&self, r: RequestBuilder) -> RequestBuilder {
        match &*self
            .token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn call(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        if self.plaintext_remote {
            return Err(ClientError::PlaintextServer(self.base.clone()));
        }
        let resp = req.send().await.map_err(|e| ClientError::ServerDown {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let reason = || status.canonical_reason().unwrap_or("error").to_owned();
        let (code, message) = match resp.json::<ErrorBody>().await {
            Ok(ErrorBody { error }) if error.message.is_empty() => (error.code, reason()),
            Ok(ErrorBody { error }) => (error.code, error.message),
            Err(_) => (ErrorCode::Other("unknown".into()), reason()),
        };
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

    /// `POST path` with a JSON body (with the login token, when logged in), as JSON; for
    /// tools and tests that look at raw answers.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.json(self.req(Method::POST, path).json(body)).await
    }

    /// `GET path` (with the login token, when logged in) as JSON; for tools and tests that
    /// look at raw answers.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.json(self.req(Method::GET, path)).await
    }

    /// A typed body sent with `method`, answered with a typed body.
    async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.json(self.req(method, path).json(body)).await
    }

    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        self.json(self.req(Method::GET, "/v1/server")).await
    }

    pub async fn register(
        &self,
        binding: &KeyBinding,
        invite: Option<&str>,
    ) -> Result<RegisterResponse, ClientError> {
        let req = RegisterRequest {
            binding: binding.clone(),
            invite: invite.map(ToOwned::to_owned),
        };
        self.send_json(Method::POST, "/v1/accounts", &req).await
    }

    /// `POST /v1/keys/rotate` (or `/revoke`): the server attests the new key and logs it.
    pub async fn change_key(
        &self,
        binding: &KeyBinding,
        revoke: bool,
    ) -> Result<(Attestation, u64), ClientError> {
        let path = if revoke {
            "/v1/keys/revoke"
        } else {
            "/v1/keys/rotate"
        };
        let req = KeyChangeRequest {
            binding: binding.clone(),
        };
        let r: KeyChangeResponse = self.send_json(Method::POST, path, &req).await?;
        Ok((r.attestation, r.index))
    }

    /// `GET /v1/kt/mine`: every log entry under our own label.
    pub async fn kt_mine(
        &self,
        since: Option<u64>,
    ) -> Result<letterme_protocol::kt::KtHistory, ClientError> {
        self.json(
            self.req(Method::GET, "/v1/kt/mine")
                .query(&LookupQuery { since }),
        )
        .await
    }

    /// `GET /v1/kt/entries`: a page of a domain's log from `start`.
    pub async fn kt_entries(&self, domain: &str, start: u64) -> Result<EntriesPage, ClientError> {
        let q = EntriesQuery {
            domain: Some(domain.to_owned()),
            start,
            limit: None,
        };
        self.json(self.req(Method::GET, "/v1/kt/entries").query(&q))
            .await
    }

    /// `POST /v1/kt/witness`: hands our server a checkpoint of another domain to check.
    pub async fn kt_witness(&self, checkpoint: &Checkpoint) -> Result<WitnessVerdict, ClientError> {
        let req = WitnessRequest {
            checkpoint: checkpoint.clone(),
        };
        self.send_json(Method::POST, "/v1/kt/witness", &req).await
    }

    /// Challenge, sign, token.
    pub async fn login(
        &mut self,
        domain: &str,
        address: &Address,
        key: &SigningKeypair,
    ) -> Result<(), ClientError> {
        let c: ChallengeResponse = self
            .send_json(
                Method::POST,
                "/v1/auth/challenge",
                &ChallengeRequest {
                    address: address.to_string(),
                },
            )
            .await?;
        let challenge: [u8; 32] =
            b64::decode_array(&c.challenge).ok_or_else(|| ClientError::ServerDown {
                url: self.base.clone(),
                reason: "malformed challenge".into(),
            })?;
        let sig = sign_challenge(key, domain, address, &challenge);
        let req = TokenRequest {
            address: address.to_string(),
            challenge: c.challenge,
            signature: sig,
            device_key: Some(key.public()),
        };
        let t: TokenResponse = self.send_json(Method::POST, "/v1/auth/token", &req).await?;
        *self
            .token
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(t.token);
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
        let r = self.with_token(self.http.get(url).query(&LookupQuery { since }));
        self.json(r).await
    }

    pub async fn send(&self, envelope: Vec<u8>) -> Result<SendResponse, ClientError> {
        self.send_to(envelope, None).await
    }

    /// [`Api::send`], to one device of our own account only (`device`: its id).
    pub async fn send_to(
        &self,
        envelope: Vec<u8>,
        device: Option<&str>,
    ) -> Result<SendResponse, ClientError> {
        self.json(
            self.req(Method::POST, "/v1/messages")
                .query(&SendQuery {
                    device: device.map(str::to_owned),
                })
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
        let req = OutboundRequest {
            message: message.map(b64::encode),
            recipients: recipients.iter().map(ToString::to_string).collect(),
        };
        self.send_json(Method::POST, "/v1/outbound", &req).await
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
                    .query(&ListQuery {
                        after,
                        limit: None,
                        wait: Some(wait_secs),
                    })
                    .timeout(Duration::from_secs(wait_secs + 30)),
            )
            .await?;
        Ok(r.messages)
    }

    pub async fn list(&self, after: i64) -> Result<Vec<ListEntry>, ClientError> {
        self.list_up_to(after, None).await
    }

    /// A page of at most `limit` entries (the server's page size when `None`).
    pub async fn list_up_to(
        &self,
        after: i64,
        limit: Option<u32>,
    ) -> Result<Vec<ListEntry>, ClientError> {
        let r: ListResponse = self
            .json(self.req(Method::GET, "/v1/messages").query(&ListQuery {
                after,
                limit,
                wait: None,
            }))
            .await?;
        Ok(r.messages)
    }

    pub async fn fetch(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        self.get_bytes(&format!("/v1/messages/{id}")).await
    }

    /// The body of a `GET` that answers bytes, not JSON.
    async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self.call(self.req(Method::GET, path)).await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| ClientError::ServerDown {
                url: self.base.clone(),
                reason: describe(&e),
            })
    }

    /// Downloads several envelopes in one request (`POST /v1/messages/fetch`): a record
    /// for each id, in order (checked), at least one, up to the server's byte budget; ask
    /// again for the ids left out at the end.
    pub async fn fetch_many(&self, ids: &[String]) -> Result<Vec<FetchedEnvelope>, ClientError> {
        let req = FetchRequest { ids: ids.to_vec() };
        let resp = self
            .call(self.req(Method::POST, "/v1/messages/fetch").json(&req))
            .await?;
        let unexpected = |reason: String| ClientError::ServerDown {
            url: self.base.clone(),
            reason: format!("unexpected answer: {reason}"),
        };
        let body = resp.bytes().await.map_err(|e| unexpected(describe(&e)))?;
        let records = FetchedEnvelope::decode_all(&body, body.len())
            .map_err(|e| unexpected(e.to_string()))?;
        if records.len() > ids.len() || (records.is_empty() && !ids.is_empty()) {
            return Err(unexpected(format!(
                "{} records for {} ids",
                records.len(),
                ids.len()
            )));
        }
        if let Some((_, id)) = records
            .iter()
            .zip(ids)
            .find(|(r, id)| hex(&r.id) != id.to_ascii_lowercase())
        {
            return Err(unexpected(format!("another envelope in the place of {id}")));
        }
        Ok(records)
    }

    /// Begins (or resumes) the upload of a blob (`POST /v1/blobs`): where it stands.
    pub async fn blob_begin(
        &self,
        id: &str,
        sealed_size: u64,
        manifest: &[u8],
    ) -> Result<BlobState, ClientError> {
        let req = BlobBegin {
            id: id.to_owned(),
            size: sealed_size,
            manifest: manifest.to_vec(),
        };
        self.send_json(Method::POST, "/v1/blobs", &req).await
    }

    /// Uploads sealed chunk `n` of a blob (`PUT /v1/blobs/{id}/{n}`).
    pub async fn blob_put(
        &self,
        id: &str,
        n: u64,
        chunk: impl Into<reqwest::Body>,
    ) -> Result<BlobState, ClientError> {
        self.json(
            self.req(Method::PUT, &format!("/v1/blobs/{id}/{n}"))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(chunk),
        )
        .await
    }

    /// Where the upload of one of this user's blobs stands (`GET /v1/blobs/{id}`).
    pub async fn blob_status(&self, id: &str) -> Result<BlobState, ClientError> {
        self.json(self.req(Method::GET, &format!("/v1/blobs/{id}")))
            .await
    }

    /// Gives up an upload no message names (`DELETE /v1/blobs/{id}`).
    pub async fn blob_discard(&self, id: &str) -> Result<(), ClientError> {
        self.call(self.req(Method::DELETE, &format!("/v1/blobs/{id}")))
            .await
            .map(drop)
    }

    /// Sealed chunk `n` of a blob (`GET /v1/blobs/{id}/{n}`).
    pub async fn blob_chunk(&self, id: &str, n: u64) -> Result<Vec<u8>, ClientError> {
        self.get_bytes(&format!("/v1/blobs/{id}/{n}")).await
    }

    /// The logged-in user's block list.
    pub async fn blocks(&self) -> Result<Vec<String>, ClientError> {
        let r: BlocksResponse = self.json(self.req(Method::GET, "/v1/blocks")).await?;
        Ok(r.blocks)
    }

    /// Blocks (`add`) or unblocks an address or `@domain`; returns the normalized entry
    /// and whether anything changed.
    pub async fn set_block(&self, entry: &str, add: bool) -> Result<(String, bool), ClientError> {
        let method = if add { Method::POST } else { Method::DELETE };
        let req = BlockRequest {
            entry: entry.to_owned(),
        };
        let r: BlockChange = self.send_json(method, "/v1/blocks", &req).await?;
        let normalized = if r.entry.is_empty() {
            entry.to_owned()
        } else {
            r.entry
        };
        Ok((normalized, r.changed))
    }

    /// Opens a link slot with the exchange's first message (`POST /v1/link`).
    pub async fn link_open(&self, message: Vec<u8>) -> Result<LinkOpened, ClientError> {
        self.send_json(Method::POST, "/v1/link", &LinkMessage { message })
            .await
    }

    /// The messages of a link slot from index `from` on, waiting up to `wait` seconds for
    /// one (`GET /v1/link/{address}/{slot}`).
    pub async fn link_read(
        &self,
        address: &Address,
        slot: &str,
        from: usize,
        wait: u64,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let r: LinkMessages = self
            .json(
                self.req(Method::GET, &format!("/v1/link/{address}/{slot}"))
                    .query(&LinkQuery {
                        from,
                        wait: Some(wait),
                    })
                    .timeout(Duration::from_secs(wait + 30)),
            )
            .await?;
        Ok(r.messages.into_iter().map(|m| m.message).collect())
    }

    /// Posts the new device's request (`PUT`) or the opening device's answer (`POST`) to a
    /// link slot.
    pub async fn link_post(
        &self,
        address: &Address,
        slot: &str,
        answer: bool,
        message: Vec<u8>,
    ) -> Result<(), ClientError> {
        let method = if answer { Method::POST } else { Method::PUT };
        self.call(
            self.req(method, &format!("/v1/link/{address}/{slot}"))
                .json(&LinkMessage { message }),
        )
        .await
        .map(drop)
    }

    /// The account's current devices (`GET /v1/devices`).
    pub async fn devices(&self) -> Result<DeviceList, ClientError> {
        self.json(self.req(Method::GET, "/v1/devices")).await
    }

    /// Adds devices certified by the identity key (`POST /v1/devices`).
    pub async fn add_devices(&self, devices: &[Device]) -> Result<DeviceList, ClientError> {
        let req = AddDevicesRequest {
            devices: devices.to_vec(),
        };
        self.send_json(Method::POST, "/v1/devices", &req).await
    }

    /// Removes a device by its short id (`DELETE /v1/devices/{id}`).
    pub async fn remove_device(&self, id: &str) -> Result<DeviceList, ClientError> {
        self.json(self.req(Method::DELETE, &format!("/v1/devices/{id}")))
            .await
    }

    /// Acknowledges several messages at once (`POST /v1/messages/ack`, at most 1000 ids).
    pub async fn ack_many(&self, ids: &[String]) -> Result<(), ClientError> {
        for chunk in ids.chunks(1000) {
            let req = AckRequest {
                ids: chunk.to_vec(),
            };
            self.call(self.req(Method::POST, "/v1/messages/ack").json(&req))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_loopback_only() {
        for remote in [
            "http://mail.example.com",
            "http://192.0.2.1:8080",
            "http://[2001:db8::1]:8080/",
        ] {
            assert!(plaintext_remote(remote), "{remote}");
            let err = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(Api::new(remote).server_info())
                .unwrap_err();
            assert!(matches!(err, ClientError::PlaintextServer(_)), "{err}");
        }
        for fine in [
            "https://mail.example.com",
            "http://127.0.0.1:8080",
            "http://127.3.4.5",
            "http://[::1]:8080",
            "http://localhost:8080",
        ] {
            assert!(!plaintext_remote(fine), "{fine}");
        }
    }
}
