//! The letter.me native server: accounts and attestation, key lookup, the ciphertext
//! message store, and its HTTP/JSON API.
//!
//! The server never sees plaintext: clients seal before they send and open after they sync.
//! It routes by the envelope's cleartext header (sender, recipients, size, time) and
//! acknowledges only what is committed to SQLite.
//!
//! Layers, each using only those below it: `serve` starts everything; `api` (the user API
//! and the federation listener) reads the shared `state`; `federation`, `kt`, `keyring`,
//! `notice`, `records` and `worker` do the work, on `outbound` (keys and limits), `auth`,
//! `metrics` and `dns`; `error` gathers the error types; `store` owns every query; `config`,
//! `clock`, `secrets` and `tls` are at the bottom. `tests::no_import_circle_between_modules`
//! keeps it so.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod dns;
pub mod egress;
pub mod error;
pub mod federation;
pub mod init;
pub mod keyring;
pub mod kt;
pub mod link;
pub mod listener;
pub mod metrics;
pub mod notice;
pub mod outbound;
pub mod records;
pub mod secrets;
pub mod serve;
pub mod state;
pub mod store;
pub mod tls;
pub mod worker;

pub use api::PROTOCOL_VERSION;
pub use clock::{Clock, SystemClock};
pub use config::Config;
pub use error::StartError;
pub use keyring::{
    DOMAIN_KEY_OVERLAP, PublishedKey, domain_key_activate, domain_key_next, domain_keys,
    load_mail_keys, mail_public_keys,
};
pub use serve::{PURGE_INTERVAL, Running, SHUTDOWN_GRACE, open_storage, purge, start};
pub use tls::{ensure_federation_cert, federation_tls};

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The top-level module of each source file, and the `crate::` modules it names
    /// (test modules left out).
    fn imports(dir: &Path, top: Option<&str>, out: &mut BTreeMap<String, BTreeSet<String>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                imports(&path, Some(top.unwrap_or(&name)), out);
                continue;
            }
            let module = top.unwrap_or(&name).to_owned();
            if module == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let used = out.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + 7..];
                let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(0)];
                    group.split(',').map(str::trim).collect()
                } else {
                    vec![rest]
                };
                for n in names {
                    let n: String = n
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if n.starts_with(|c: char| c.is_ascii_lowercase()) && n != module {
                        used.insert(n);
                    }
                }
            }
        }
    }

    /// No two of the crate's modules import each other, directly or through others:
    /// each module uses only the layers below it (the list is in the crate's doc).
    #[test]
    fn no_import_circle_between_modules() {
        let mut graph = BTreeMap::new();
        imports(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            None,
            &mut graph,
        );
        assert!(graph.contains_key("api") && graph["api"].contains("state"));
        for (from, to) in &graph {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<&String> = to.iter().collect();
            while let Some(m) = stack.pop() {
                assert_ne!(
                    m, from,
                    "{from} imports a module that imports {from}: {graph:?}"
                );
                if seen.insert(m) {
                    stack.extend(graph.get(m).into_iter().flatten());
                }
            }
        }
    }
}
