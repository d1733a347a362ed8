//! Prometheus metrics served at `/metrics` (text exposition format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    pub listener: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub deliveries: Counter,
    pub delivered_bytes: Counter,
    pub acks: Counter,
    pub purged: Counter,
    pub registrations: Counter,
    pub logins: Counter,
    pub key_lookups: Counter,
    pub errors: Family<CodeLabel, Counter>,
    pub accounts: Gauge,
    /// Inbound SMTP messages by outcome: accepted, quarantined, rejected, tempfailed.
    pub smtp_messages: Family<ResultLabel, Counter>,
    /// Connections closed at accept: the listener's cap (`full`) or the client prefix's.
    pub connections_refused: Family<RefusedLabel, Counter>,
    /// Blob chunks sent to other domains (each chunk a peer lacked, once).
    pub blob_chunks_sent: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("letterme");
        let m = Self {
            deliveries: Counter::default(),
            delivered_bytes: Counter::default(),
            acks: Counter::default(),
            purged: Counter::default(),
            registrations: Counter::default(),
            logins: Counter::default(),
            key_lookups: Counter::default(),
            errors: Family::default(),
            accounts: Gauge::default(),
            smtp_messages: Family::default(),
            connections_refused: Family::default(),
            blob_chunks_sent: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "deliveries",
            "Envelopes accepted and committed",
            m.deliveries.clone(),
        );
        registry.register(
            "delivered_bytes",
            "Bytes of envelopes committed",
            m.delivered_bytes.clone(),
        );
        registry.register(
            "acks",
            "Deliveries acknowledged by clients and deleted",
            m.acks.clone(),
        );
        registry.register(
            "purged",
            "Deliveries deleted by the retention purge",
            m.purged.clone(),
        );
        registry.register(
            "registrations",
            "Accounts registered",
            m.registrations.clone(),
        );
        registry.register("logins", "Tokens issued", m.logins.clone());
        registry.register("key_lookups", "Key lookups answered", m.key_lookups.clone());
        registry.register("api_errors", "API errors by code", m.errors.clone());
        registry.register("accounts", "Registered accounts", m.accounts.clone());
        registry.register(
            "smtp_messages",
            "Inbound SMTP messages by outcome",
            m.smtp_messages.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept, by listener and limit",
            m.connections_refused.clone(),
        );
        registry.register(
            "federation_blob_chunks_sent",
            "Blob chunks sent to other domains",
            m.blob_chunks_sent.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn smtp(&self, result: &str) {
        self.smtp_messages
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn connection_refused(&self, listener: &str, reason: &str) {
        self.connections_refused
            .get_or_create(&RefusedLabel {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn error(&self, code: &letterme_protocol::api::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str().to_owned(),
            })
            .inc();
    }
}
