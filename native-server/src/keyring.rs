//! The server's own keys: the domain key (and its rotation), the key-transparency VRF key,
//! the DKIM keys and the outbound queue key. Each is stored sealed under the
//! key-encryption key (`secrets`) and generated on first use.

use letterme_protocol::{IdentityPublicKey, SigningKeypair};

use crate::config::Config;
use crate::error::StartError;
use crate::outbound;
use crate::secrets::{self, Kek};
use crate::store::{self, Store};

/// How long a replaced domain key stays published for verification (seconds).
pub const DOMAIN_KEY_OVERLAP: u64 = 7 * 86_400;

pub(crate) async fn load_domain_key(
    store: &Store,
    config: &Config,
    now: u64,
) -> Result<SigningKeypair, StartError> {
    let (public, seed) = load_secret(store, config, "domain", now, || {
        let key = SigningKeypair::generate();
        tracing::info!(public = %key.public().to_base64(), "generated the domain key");
        Ok((
            key.public().0.to_vec(),
            zeroize::Zeroizing::new(key.secret_bytes().to_vec()),
        ))
    })
    .await?;
    Ok(keypair_from_seed(&public, &seed)?)
}

/// The Ed25519 keypair of a stored seed, checked against its stored public key.
fn keypair_from_seed(public: &[u8], seed: &[u8]) -> Result<SigningKeypair, secrets::SecretError> {
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| secrets::SecretError::Malformed)?;
    let key = SigningKeypair::from_secret_bytes(&seed);
    if key.public().0.as_slice() != public {
        return Err(secrets::SecretError::Malformed);
    }
    Ok(key)
}

/// The key of the log's VRF labels, generated on first use.
pub(crate) async fn load_vrf_key(
    store: &Store,
    config: &Config,
    now: u64,
) -> Result<letterme_protocol::kt::VrfKey, StartError> {
    let (public, secret) = load_secret(store, config, "kt-vrf", now, || {
        let key = letterme_protocol::kt::VrfKey::generate();
        Ok((
            key.public().to_vec(),
            zeroize::Zeroizing::new(key.to_bytes().to_vec()),
        ))
    })
    .await?;
    Ok(vrf_from(&public, &secret)?)
}

/// The VRF key of a stored secret, checked against its stored public key: a swapped or
/// corrupted row must not silently give the log other labels.
fn vrf_from(
    public: &[u8],
    secret: &[u8],
) -> Result<letterme_protocol::kt::VrfKey, secrets::SecretError> {
    let bytes: [u8; 32] = secret
        .try_into()
        .map_err(|_| secrets::SecretError::Malformed)?;
    let key =
        letterme_protocol::kt::VrfKey::from_bytes(bytes).ok_or(secrets::SecretError::Malformed)?;
    if key.public().as_slice() != public {
        return Err(secrets::SecretError::Malformed);
    }
    Ok(key)
}

/// Loads the DKIM keys and the queue key, generating each on first use.
pub async fn load_mail_keys(
    store: &Store,
    config: &Config,
    now: u64,
) -> Result<outbound::MailKeys, StartError> {
    let (ed25519_public, ed25519_seed) = load_secret(store, config, "dkim-ed25519", now, || {
        let key = SigningKeypair::generate();
        Ok((
            key.public().0.to_vec(),
            zeroize::Zeroizing::new(key.secret_bytes().to_vec()),
        ))
    })
    .await?;
    let (rsa_public, rsa_pkcs8) = load_secret(store, config, "dkim-rsa", now, || {
        let (private, public) = outbound::generate_rsa().map_err(StartError::Config)?;
        tracing::info!("generated the RSA DKIM key");
        Ok((public, private))
    })
    .await?;
    let (_, queue) = load_secret(store, config, "outbound-queue", now, || {
        Ok((
            Vec::new(),
            zeroize::Zeroizing::new(letterme_protocol::keys::random_bytes::<32>().to_vec()),
        ))
    })
    .await?;
    let queue: [u8; 32] = queue
        .as_slice()
        .try_into()
        .map_err(|_| secrets::SecretError::Malformed)?;
    Ok(outbound::MailKeys {
        ed25519_seed,
        ed25519_public,
        rsa_pkcs8,
        rsa_public,
        queue: outbound::QueueKey::new(queue),
    })
}

/// The DKIM public keys (Ed25519 raw, RSA SubjectPublicKeyInfo), read without the
/// key-encryption key; generated (which needs it) only when missing.
pub async fn mail_public_keys(
    store: &Store,
    config: &Config,
    now: u64,
) -> Result<(Vec<u8>, Vec<u8>), StartError> {
    let store_err = |source| StartError::Store {
        path: config.database_path().display().to_string(),
        source,
    };
    let ed = store
        .server_key_row("dkim-ed25519")
        .await
        .map_err(store_err)?;
    let rsa = store.server_key_row("dkim-rsa").await.map_err(store_err)?;
    if let (Some(ed), Some(rsa)) = (ed, rsa) {
        return Ok((ed.0, rsa.0));
    }
    let keys = load_mail_keys(store, config, now).await?;
    Ok((keys.ed25519_public.clone(), keys.rsa_public.clone()))
}

type Secret = (Vec<u8>, zeroize::Zeroizing<Vec<u8>>);

/// What a sealed secret is bound to: its public part, or for a secret without one (the
/// outbound queue key) its row's name, which never changes for such a key.
fn binding<'a>(name: &'a str, public: &'a [u8]) -> &'a [u8] {
    if public.is_empty() {
        name.as_bytes()
    } else {
        public
    }
}

/// A server secret by name: (public part, secret), opened with the key-encryption key; on
/// first use generated, sealed and stored.
async fn load_secret(
    store: &Store,
    config: &Config,
    name: &'static str,
    now: u64,
    generate: impl FnOnce() -> Result<Secret, StartError>,
) -> Result<Secret, StartError> {
    let key_file = config.key_file();
    let store_err = |source| StartError::Store {
        path: config.database_path().display().to_string(),
        source,
    };
    if let Some((public, sealed, kdf)) = store.server_key(name).await.map_err(store_err)? {
        let kek = Kek::for_existing(&kdf, &key_file)?;
        return Ok((public.clone(), kek.open(&sealed, binding(name, &public))?));
    }
    let (public, secret) = generate()?;
    let kek = Kek::for_new_key(&key_file)?;
    let sealed = kek.seal(&secret, binding(name, &public));
    store
        .put_server_key(name, public.clone(), sealed, kek.kdf.clone(), now)
        .await
        .map_err(store_err)?;
    Ok((public, secret))
}

/// A domain key to publish in `_mailx`, with a note on its role during a rotation.
#[derive(Debug, Clone)]
pub struct PublishedKey {
    pub key: IdentityPublicKey,
    pub note: Option<String>,
}

/// The domain keys to publish now: the current one; the next one once generated; the
/// previous one for [`DOMAIN_KEY_OVERLAP`] after a switch.
pub async fn domain_keys(store: &Store, now: u64) -> Result<Vec<PublishedKey>, store::StoreError> {
    let mut out = Vec::new();
    let as_key = |b: &[u8]| b.try_into().ok().map(IdentityPublicKey);
    if let Some((public, _, _, _)) = store.server_key_row("domain").await?
        && let Some(key) = as_key(&public)
    {
        out.push(PublishedKey { key, note: None });
    }
    if let Some((public, _, _, _)) = store.server_key_row("domain-next").await?
        && let Some(key) = as_key(&public)
    {
        out.push(PublishedKey {
            key,
            note: Some(
                "next domain key (not in use yet): publish it now, `letterme domain-key activate` after the TTL"
                    .into(),
            ),
        });
    }
    if let Some((public, _, _, retired)) = store.server_key_row("domain-previous").await?
        && now < retired + DOMAIN_KEY_OVERLAP
        && let Some(key) = as_key(&public)
    {
        out.push(PublishedKey {
            key,
            note: Some(format!(
                "previous domain key, still valid for verification: keep it published for {} more day(s)",
                (retired + DOMAIN_KEY_OVERLAP - now).div_ceil(86_400)
            )),
        });
    }
    Ok(out)
}

/// Generates the next domain key (sealed like the current one) for publication before use.
pub async fn domain_key_next(config: &Config, now: u64) -> Result<IdentityPublicKey, StartError> {
    let store = open_store(config)?;
    let store_err = |source| StartError::Store {
        path: config.database_path().display().to_string(),
        source,
    };
    let Some((_, _, kdf, _)) = store.server_key_row("domain").await.map_err(store_err)? else {
        return Err(StartError::Config(
            "there is no domain key yet; run `letterme init` or start the server once".into(),
        ));
    };
    if let Some((public, _, _, _)) = store
        .server_key_row("domain-next")
        .await
        .map_err(store_err)?
    {
        return Err(StartError::Config(format!(
            "a next domain key ({}) exists already; publish it and run `letterme domain-key activate`",
            letterme_protocol::b64::encode(&public)
        )));
    }
    let kek = Kek::for_existing(&kdf, &config.key_file())?;
    let key = SigningKeypair::generate();
    store
        .put_server_key(
            "domain-next",
            key.public().0.to_vec(),
            kek.seal(&*key.secret_bytes(), &key.public().0),
            kdf,
            now,
        )
        .await
        .map_err(store_err)?;
    tracing::info!(public = %key.public().to_base64(), "generated the next domain key");
    Ok(key.public())
}

/// Switches to the next domain key: the current key becomes the previous one (published
/// for [`DOMAIN_KEY_OVERLAP`]), every account is attested again with the new key, and the change
/// is appended to the key-transparency log, in one transaction. Run it with the server stopped; the server loads the key at start.
pub async fn domain_key_activate(
    config: &Config,
    now: u64,
) -> Result<(IdentityPublicKey, usize), StartError> {
    let store = open_store(config)?;
    let store_err = |source| StartError::Store {
        path: config.database_path().display().to_string(),
        source,
    };
    let Some((public, sealed, kdf, _)) = store
        .server_key_row("domain-next")
        .await
        .map_err(store_err)?
    else {
        return Err(StartError::Config(
            "there is no next domain key; run `letterme domain-key next` and publish it first"
                .into(),
        ));
    };
    let seed = Kek::for_existing(&kdf, &config.key_file())?.open(&sealed, &public)?;
    let key = keypair_from_seed(&public, &seed)?;
    let signer = key.clone();
    let n = store
        .switch_domain_key(signer, now)
        .await
        .map_err(store_err)?;
    tracing::info!(public = %key.public().to_base64(), accounts = n, "switched to the next domain key");
    Ok((key.public(), n))
}

fn open_store(config: &Config) -> Result<Store, StartError> {
    let path = config.database_path();
    Store::open(&path).map_err(|source| StartError::Store {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vrf_secret_must_match_its_stored_public_key() {
        let key = letterme_protocol::kt::VrfKey::generate();
        let other = letterme_protocol::kt::VrfKey::generate();
        let secret = key.to_bytes();
        assert!(vrf_from(&key.public(), &*secret).is_ok());
        assert!(vrf_from(&other.public(), &*secret).is_err());
        assert!(vrf_from(&key.public(), &secret[..31]).is_err());
    }
}
