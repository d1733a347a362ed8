//! An in-process authoritative DNS server for tests (hickory-server), on 127.0.0.1 with
//! UDP and TCP on one port. Authoritative for the root, so unknown names get NXDOMAIN
//! (DMARC's walk up to `_dmarc.<tld>` must not turn into a temperror). A switch makes it
//! stop answering, to simulate a DNS timeout.

use std::net::SocketAddr;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

pub fn name(s: &str) -> Name {
    let fqdn = if s.ends_with('.') {
        s.to_owned()
    } else {
        format!("{s}.")
    };
    Name::from_str(&fqdn).expect("a valid test name")
}

/// A TXT record, split into character-strings of at most 255 bytes (RFC 1035 §3.3.14).
pub fn txt(owner: &str, value: &str) -> Record {
    txt_ttl(owner, value, 60)
}

/// A TXT record with its TTL in seconds.
pub fn txt_ttl(owner: &str, value: &str, ttl: u32) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::TXT(TXT::from_bytes(value.as_bytes().chunks(255).collect())),
    )
}

struct Handler {
    catalog: Catalog,
    blackhole: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        if self.blackhole.load(Ordering::SeqCst) {
            // Nothing is sent: the client times out.
            drop(response_handle);
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            return ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            });
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// The running test DNS server.
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    blackhole: Arc<AtomicBool>,
    _server: Server<Handler>,
}

impl std::fmt::Debug for TestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDns")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestDns {
    /// Starts serving `records` (call inside a tokio runtime that outlives the server).
    pub async fn start(records: Vec<Record>) -> std::io::Result<Self> {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await?;
            let port = udp.local_addr()?.port();
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(tcp) => break (udp, tcp),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => return Err(e),
            }
        };
        let addr = udp.local_addr()?;
        let mut zone =
            InMemoryZoneHandler::empty(Name::root(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            name("ns.test"),
            name("hostmaster.test"),
            1,
            3600,
            600,
            86400,
            60,
        );
        assert!(zone.upsert_mut(Record::from_rdata(Name::root(), 3600, RData::SOA(soa)), 1));
        for r in records {
            assert!(zone.upsert_mut(r, 1), "record rejected");
        }
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = zone.clone();
        catalog.upsert(LowerName::from(Name::root()), vec![handler]);
        let blackhole = Arc::new(AtomicBool::new(false));
        let mut server = Server::new(Handler {
            catalog,
            blackhole: blackhole.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 32);
        Ok(Self {
            addr,
            zone,
            blackhole,
            _server: server,
        })
    }

    /// Stops (true) or resumes (false) answering.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }

    /// Replaces the TXT records at `owner`.
    pub async fn set_txt(&self, owner: &str, value: &str) {
        self.set_txt_ttl(owner, value, 60).await;
    }

    /// Replaces the TXT records at `owner`, with a TTL in seconds.
    pub async fn set_txt_ttl(&self, owner: &str, value: &str, ttl: u32) {
        self.set_txts_ttl(owner, &[value], ttl).await;
    }

    /// Replaces the TXT records at `owner` with one record per value.
    pub async fn set_txts_ttl(&self, owner: &str, values: &[&str], ttl: u32) {
        let n = name(owner);
        self.zone
            .records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&n), RecordType::TXT));
        for v in values {
            assert!(self.zone.upsert(txt_ttl(owner, v, ttl), 1).await);
        }
    }
}

impl TestDns {
    /// Serves the records of a zone file text (as `letterme dns` prints it: comments, TXT in
    /// quoted strings), parsed by hickory's zone parser; each record set replaces the one
    /// at its owner and type.
    pub async fn load_zone(&self, text: &str) {
        let records = parse_zone(text);
        let mut map = self.zone.records_mut().await;
        for r in &records {
            map.remove(&RrKey::new(LowerName::new(&r.name), r.record_type()));
        }
        drop(map);
        for r in records {
            assert!(self.zone.upsert(r, 1).await, "record rejected");
        }
    }

    /// Removes every record of `rtype` at `owner`.
    pub async fn remove(&self, owner: &str, rtype: RecordType) {
        self.zone
            .records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&name(owner)), rtype));
    }
}

/// Every record of a zone file text (hickory-proto's RFC 1035 §5 parser).
pub fn parse_zone(text: &str) -> Vec<Record> {
    let (_, sets) =
        hickory_server::proto::serialize::txt::Parser::new(text, None, Some(Name::root()))
            .parse()
            .unwrap_or_else(|e| panic!("zone text does not parse: {e}\n{text}"));
    sets.into_values()
        .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
        .collect()
}
