//! Sending: a draft is checked against each recipient's verified key, sealed once per
//! envelope (To+Cc, and one per Bcc), and uploaded; ordinary addresses go to the server's
//! outbound relay or get a notice, as the server's outbound mode says.

use std::collections::BTreeMap;

use letterme_protocol::api::OutboundMode;
use letterme_protocol::codec::hex;
use letterme_protocol::envelope::seal_message_except;
use letterme_protocol::keys::random_bytes;
use letterme_protocol::{Address, EncryptionPublicKey, Payload};
use serde::Serialize;

use crate::cache::NewMail;
use crate::{ClientError, Online, cache_error, now, render};

/// What the user wants to send.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub subject: String,
    pub body: String,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    /// Kept when the mail client chose one (threads), generated otherwise.
    pub message_id: Option<String>,
    /// The user agreed that copies to ordinary addresses leave end-to-end encryption.
    pub allow_plaintext: bool,
    /// The MIME entity (text, HTML, inline parts, attachments; [`crate::mime`]); `body`
    /// then holds its text for readers that show text only.
    pub mime: Option<Vec<u8>>,
    /// Files [`crate::mime::compose_apart`] left out of `mime`, which names each in its
    /// place: they go as blobs, or are put in where the entity goes whole.
    pub apart: Vec<crate::attached::AttachedFile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    pub message_id: String,
    /// Envelope ids, one for To+Cc and one per Bcc.
    pub envelopes: Vec<String>,
    pub recipients: Vec<Address>,
    /// Ordinary addresses the server sends the message to in plaintext (relay mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relayed: Vec<Address>,
    /// Ordinary addresses that get only a notice (notice mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub noticed: Vec<Address>,
}

impl Online {
    /// Seals `payload` with mailbox state `place` to every device of our account and
    /// sends it: the id of its envelope.
    async fn send_to_own_devices(
        &self,
        payload: &Payload,
        place: letterme_protocol::state::StateOp,
    ) -> Result<String, ClientError> {
        let me = &self.me.profile.address;
        let keys = self.own_devices().await?;
        let copy = Payload {
            from: me.clone(),
            state: vec![place],
            ..payload.clone()
        };
        let recipients: Vec<(Address, EncryptionPublicKey)> =
            keys.into_iter().map(|k| (me.clone(), k)).collect();
        let env = letterme_protocol::envelope::seal(
            letterme_protocol::envelope::SignerKind::User,
            &self.me.keys.device,
            &copy,
            &recipients,
            now(),
        )?;
        self.api.send(env.encode()).await?;
        Ok(env.id.to_hex())
    }

    /// What the server does with mail for ordinary addresses.
    pub async fn outbound_mode(&self) -> Result<OutboundMode, ClientError> {
        Ok(self.api.server_info().await?.outbound)
    }

    pub async fn send(&self, draft: &Draft) -> Result<SendReport, ClientError> {
        let all: Vec<&Address> = draft.to.iter().chain(&draft.cc).chain(&draft.bcc).collect();
        if all.is_empty() {
            return Err(ClientError::NoRecipients);
        }
        let p = &self.me.profile;
        let info = self.api.server_info().await?;
        let mut keys: BTreeMap<Address, Vec<EncryptionPublicKey>> = BTreeMap::new();
        let mut legacy: std::collections::BTreeSet<Address> = std::collections::BTreeSet::new();
        for a in &all {
            if !keys.contains_key(*a) && !legacy.contains(*a) {
                match self.verified_keys(a).await {
                    Ok(found) => {
                        keys.insert((*a).clone(), found.encryption_keys());
                    }
                    Err(ClientError::Legacy(a)) => {
                        legacy.insert(a);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let legacy_list: Vec<Address> = legacy.iter().cloned().collect();
        if !legacy.is_empty() {
            match info.outbound {
                OutboundMode::Relay if !draft.allow_plaintext => {
                    return Err(ClientError::PlaintextRefused(legacy_list));
                }
                OutboundMode::Relay | OutboundMode::Notice => {}
                OutboundMode::Off => return Err(ClientError::OutboundOff(legacy_list)),
            }
        }
        let message_id = draft
            .message_id
            .as_deref()
            .and_then(render::clean_msg_id)
            .unwrap_or_else(|| format!("<{}@{}>", hex(&random_bytes::<16>()), p.domain));
        let mut payload = Payload {
            from: p.address.clone(),
            to: draft.to.clone(),
            cc: draft.cc.clone(),
            bcc: vec![],
            subject: draft.subject.clone(),
            body: draft.body.clone(),
            headers: vec![],
            date: now(),
            message_id: message_id.clone(),
            in_reply_to: draft.in_reply_to.clone(),
            references: draft.references.clone(),
            legacy: None,
            mime: None,
            blobs: vec![],
            state: vec![],
        };
        // Large parts go as blobs (a server that takes none keeps them in the envelope, up
        // to its size limit); other domains' servers get them from ours (PROTOCOL.md §17.5a).
        // Files set apart go as blobs of their bytes, read from their files as they go.
        let blobs_taken = !keys.is_empty() && info.max_attachment_size > 0;
        let as_blobs = match &draft.mime {
            Some(entity) if !draft.apart.is_empty() && blobs_taken => {
                let refs = self
                    .upload_apart(&draft.apart, info.max_attachment_size)
                    .await?;
                Some(crate::blobs::with_entity(&payload, entity.clone(), refs))
            }
            Some(entity) if blobs_taken => {
                self.with_parts_as_blobs(&payload, entity, info.max_attachment_size)
                    .await?
            }
            _ => None,
        };
        // The whole entity again only where it is sent whole: sealed without blobs, or
        // relayed to ordinary addresses (a notice carries none of it).
        if as_blobs.is_none() || (!legacy.is_empty() && info.outbound == OutboundMode::Relay) {
            payload.mime = match &draft.mime {
                Some(entity) if !draft.apart.is_empty() => {
                    let bodies = draft
                        .apart
                        .iter()
                        .map(|f| {
                            let bytes = f.bytes.whole().map_err(|e| ClientError::attachment(&e))?;
                            let text = crate::mime::Base64Body(&bytes);
                            Ok(Some(text.range(0..text.len())))
                        })
                        .collect::<Result<Vec<_>, ClientError>>()?;
                    Some(crate::mime::attach(entity, &bodies).0)
                }
                other => other.clone(),
            };
        }
        // A send that fails after its uploads gives them up (the server keeps any that a
        // posted envelope names), so they do not count against the limits for a day.
        let posted = async {
            let envelopes = seal_message_except(
                &self.me.keys.device,
                as_blobs.as_ref().unwrap_or(&payload),
                &draft.bcc,
                &|a| keys.get(a).cloned().unwrap_or_default(),
                &legacy,
                now(),
            )?;
            let encoded: Vec<(String, Vec<u8>)> = envelopes
                .iter()
                .map(|e| (e.id.to_hex(), e.encode()))
                .collect();
            if let Some((_, big)) = encoded
                .iter()
                .find(|(_, b)| b.len() as u64 > info.max_message_size)
            {
                return Err(ClientError::TooLarge {
                    size: big.len() as u64,
                    limit: info.max_message_size,
                });
            }
            // Ordinary addresses first: the server's limits and checks refuse there, and then
            // nothing at all has been sent.
            let (mut relayed, mut noticed) = (Vec::new(), Vec::new());
            if !legacy.is_empty() {
                if info.outbound == OutboundMode::Relay {
                    let raw = render::outgoing(&payload).ok_or_else(|| {
                        ClientError::Io("the message cannot be written as ordinary email".into())
                    })?;
                    self.api.send_outbound(&legacy_list, Some(&raw)).await?;
                    relayed = legacy_list;
                } else {
                    self.api.send_outbound(&legacy_list, None).await?;
                    noticed = legacy_list;
                }
            }
            let mut ids = Vec::new();
            for (id, bytes) in encoded {
                self.api.send(bytes).await?;
                ids.push(id);
            }
            Ok::<_, ClientError>((relayed, noticed, ids))
        }
        .await;
        let (relayed, noticed, ids) = match posted {
            Ok(p) => p,
            Err(e) => {
                if let Some(p) = &as_blobs {
                    self.discard_blobs(&p.blobs).await;
                }
                return Err(e);
            }
        };
        // Our own copy, for the Sent mailbox; a client that also APPENDs it finds it there.
        // Its blobs stay the chunks the upload kept, not a second copy of their bytes.
        let sent = Payload {
            bcc: draft.bcc.clone(),
            ..as_blobs.unwrap_or(payload)
        };
        // The account's other devices get it in an envelope of its own (PROTOCOL.md §9.6).
        let gid = hex(&random_bytes::<16>());
        let date = now() as i64;
        let flags = vec!["\\Seen".to_owned()];
        let shared = match self
            .me
            .cache
            .placement_for_all(&gid, "Sent", &flags, date)?
        {
            Some(place) => match self.send_to_own_devices(&sent, place).await {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(error = %e, "the Sent copy did not reach the other devices");
                    None
                }
            },
            None => None,
        };
        let (raw, pieces) = self.me.own_copy(sent)?;
        self.me
            .cache
            .append_placed(
                &NewMail {
                    folder: "Sent".into(),
                    flags,
                    internal_date: date,
                    raw,
                    message_id: Some(message_id.clone()),
                    pieces,
                },
                shared.as_deref().map(|origin| (gid.as_str(), origin)),
            )
            .map_err(cache_error)?;
        Ok(SendReport {
            message_id,
            envelopes: ids,
            recipients: keys.into_keys().collect(),
            relayed,
            noticed,
        })
    }
}
